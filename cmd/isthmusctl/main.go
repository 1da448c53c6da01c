// Command isthmusctl is the operator's CLI for an Isthmus clusterset:
// `isthmusctl broker install` prepares the hub cluster, `isthmusctl join`
// makes a cluster a member (both idempotent, printing what they did),
// `export`/`unexport` write a ServiceExport, `status` and `diagnose` show
// the clusterset and one service end to end, `verify` checks it live with
// short-lived pods, `gather` writes a support bundle, `version` compares this client with every agent, and `demo
// up|down` runs the local demo.
//
// It is built on cobra with kubectl's own connection flags
// (k8s.io/cli-runtime's ConfigFlags: --kubeconfig, --context,
// -n/--namespace, --as, --request-timeout...), so they mean what they
// mean to kubectl in every command, anywhere on the line. Installed as
// `kubectl-isthmus` (make build writes that name too) it is the kubectl
// plugin `kubectl isthmus`, behaving the same.
//
// Exit codes: 0 when everything ran and every check passed, 1 when a
// check failed or --wait timed out (the report is printed first), 2 when
// the command could not run (bad flags, unreachable cluster).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/isthmus-dev/isthmus/cmd/internal/logging"
)

const (
	exitChecksFailed = 1
	exitError        = 2
)

// checksFailed is returned by a command that ran to the end but found a
// problem: the report is already printed, and the exit code is 1.
type checksFailed struct{ msg string }

func (e *checksFailed) Error() string { return e.msg }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := runAs(ctx, commandName(os.Args[0]), os.Args[1:], os.Stdout, os.Stderr, true)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// commandName is how help and completion name the program: "kubectl
// isthmus" when it runs as the kubectl plugin kubectl-isthmus.
func commandName(argv0 string) string {
	base := filepath.Base(argv0)
	if plugin, ok := strings.CutPrefix(base, "kubectl-"); ok {
		return "kubectl " + strings.ReplaceAll(plugin, "_", "-")
	}
	return "isthmusctl"
}

func exitCode(err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "isthmusctl:", err)
	var failed *checksFailed
	if errors.As(err, &failed) {
		return exitChecksFailed
	}
	return exitError
}

// run runs isthmusctl with args, as the tests do in-process: client-go's
// klog stays as it is, for klog's logger is the process's, and tests
// running one after another would each claim it.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runAs(ctx, "isthmusctl", args, stdout, stderr, false)
}

// runAs runs the command tree; with klogToo (the binary's main), klog is
// routed into the logger --log-level and --log-format make.
func runAs(ctx context.Context, name string, args []string, stdout, stderr io.Writer, klogToo bool) error {
	root := newRoot(name, stdout, stderr, klogToo)
	root.SetArgs(args)
	return root.ExecuteContext(ctx)
}

// newRoot builds the command tree. Each command's wiring is in its own
// file; they share the kubectl flags in k.
func newRoot(name string, stdout, stderr io.Writer, klogToo bool) *cobra.Command {
	k := newKubeFlags()
	var logFlags logging.Flags
	root := &cobra.Command{
		// Help and completion name the program as it was called: the
		// display name carries both words of "kubectl isthmus".
		Use:         name[strings.LastIndex(name, " ")+1:],
		Annotations: map[string]string{cobra.CommandDisplayNameAnnotation: name},
		Short:       "operate an Isthmus clusterset",
		Long: name + ` operates an Isthmus clusterset: install the broker, join members,
export services, and see the clusterset as every member sees it.

Connection flags are kubectl's and mean the same in every command:
--kubeconfig, --context, -n/--namespace, --as, --request-timeout.
--log-level and --log-format (text, or json) govern what is logged to
stderr besides a command's report: client-go's warnings, and with
--log-level debug-2 every request to an apiserver.
Exit codes: 0 all is well, 1 a check failed or --wait timed out,
2 the command could not run.`,
		SilenceErrors: true,
		SilenceUsage:  true,
		// A bare "isthmusctl" prints help and exits 0, as kubectl does.
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	k.register(root)
	// The daemon's own flag code, added to cobra's flag set: both
	// binaries parse --log-level and --log-format alike.
	goFlags := flag.NewFlagSet(name, flag.ContinueOnError)
	logFlags.Register(goFlags, "text")
	root.PersistentFlags().AddGoFlagSet(goFlags)
	_ = root.RegisterFlagCompletionFunc("log-format", cobra.FixedCompletions([]string{"text", "json"}, cobra.ShellCompDirectiveNoFileComp))
	_ = root.RegisterFlagCompletionFunc("log-level", cobra.FixedCompletions([]string{"debug", "info", "warn", "error", "debug-2"}, cobra.ShellCompDirectiveNoFileComp))
	// Before any command runs (and before any client exists, so none of
	// client-go's lines escape it), the logger the flags ask for.
	root.PersistentPreRunE = func(*cobra.Command, []string) (err error) {
		newLogger := logging.Logger
		if klogToo {
			newLogger = logging.New
		}
		k.log, err = newLogger(stderr, logFlags)
		return err
	}
	root.AddGroup(&cobra.Group{ID: "setup", Title: "Setting up:"}, &cobra.Group{ID: "use", Title: "Using and inspecting:"})
	for _, c := range []*cobra.Command{brokerCommand(k), joinCommand(k), tunnelCommand(k), demoCommand()} {
		c.GroupID = "setup"
		root.AddCommand(c)
	}
	for _, c := range []*cobra.Command{exportCommand(k, false), exportCommand(k, true), statusCommand(k), diagnoseCommand(k), gatherCommand(k), verifyCommand(k), versionCommand(k)} {
		c.GroupID = "use"
		root.AddCommand(c)
	}
	// Unknown flags and arguments are usage errors with the command's name.
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return fmt.Errorf("%s: %w (see %s -h)", cmd.CommandPath(), err, cmd.CommandPath())
	})
	return root
}

// exactName is cobra.ExactArgs(1) with a usage line as the error.
func exactName(usage string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != 1 || args[0] == "" {
			return fmt.Errorf("usage: %s", usage)
		}
		return nil
	}
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}
