// Command isthmus is the Isthmus daemon. Each role runs as a subcommand
// (`isthmus agent`, `isthmus dns`, `isthmus tunnel`), or all of them in
// one process (`isthmus all`, for small clusters and the demo); `isthmus
// hub-quota` runs on the hub cluster (the broker's record counter). Flags are
// documented by `isthmus <role> -h`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/isthmus-dev/isthmus/cmd/internal/buildinfo"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The roles log as --log-level and --log-format say; this logger
	// reports only why the process ends.
	if err := run(ctx, os.Args[1:], nil, os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		slog.New(slog.NewJSONHandler(os.Stderr, nil)).Error("exiting", "err", err)
		os.Exit(1)
	}
}

// run runs the role args name. With log nil the roles log to stderr as
// --log-level and --log-format say; tests pass a logger of their own.
func run(ctx context.Context, args []string, log *slog.Logger, stdout, stderr io.Writer) error {
	all := roles()
	names := make([]string, 0, len(all)+1)
	for _, r := range all {
		names = append(names, r.name)
	}
	names = append(names, "all")
	for _, r := range hubRoles() {
		names = append(names, r.name)
	}
	if len(args) > 0 && args[0] == "version" {
		bi := buildinfo.Read()
		fmt.Fprintf(stdout, "isthmus %s\nrevision %s (%s, modified: %v)\n%s\n", bi.Version, bi.Revision, bi.Time, bi.Modified, bi.GoVersion)
		return nil
	}
	if len(args) > 0 && args[0] == "probe" {
		// Hidden: the pods of isthmusctl verify run it.
		return runProbe(ctx, args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "all" {
		return runRoles(ctx, "all", all, args[1:], log, stderr)
	}
	for _, r := range append(all, hubRoles()...) {
		if len(args) > 0 && args[0] == r.name {
			return runRoles(ctx, r.name, []role{r}, args[1:], log, stderr)
		}
	}
	fmt.Fprintf(stderr, "usage: isthmus <role> [flags] | isthmus version\nroles: %s (all: every member role in one process)\n", strings.Join(names, ", "))
	if len(args) == 0 {
		return errors.New("no role given")
	}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		return flag.ErrHelp
	}
	return fmt.Errorf("unknown role %q", args[0])
}
