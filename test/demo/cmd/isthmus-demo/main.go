// Command isthmus-demo runs the Isthmus demo (`make demo`, `isthmusctl
// demo up`): it installs a local clusterset on real nodes from the tree
// (test/install), narrates the scenario with its timings, prints a
// summary, and tears everything down on exit or Ctrl-C; with KEEP=1 it
// prints the kubeconfig and keeps the clusterset up until Ctrl-C or
// `isthmus-demo down`. It needs root, the repository it was built from
// (it builds the images from it) and helm in its bin/.
//
//	isthmus-demo up [--keep]
//	isthmus-demo down
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
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/isthmus-dev/isthmus/test/cluster"
	"github.com/isthmus-dev/isthmus/test/demo"
)

// pidFile records the running demo, for `down` from another shell.
var pidFile = filepath.Join(os.TempDir(), "isthmus-demo.pid")

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "isthmus-demo:", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	if len(args) == 0 {
		return errors.New("usage: isthmus-demo up [--keep] | down")
	}
	switch args[0] {
	case "up":
		fs := flag.NewFlagSet("isthmus-demo up", flag.ContinueOnError)
		keep := fs.Bool("keep", os.Getenv("KEEP") == "1", "keep the clusterset up after the scenario, until Ctrl-C (KEEP=1)")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		return up(*keep, out)
	case "down":
		return down(out)
	default:
		return fmt.Errorf("unknown command %q: want up or down", args[0])
	}
}

func up(keep bool, out io.Writer) error {
	// Before anything slow: root, the node packages, the tools, helm.
	if err := demo.Preflight(); err != nil {
		return err
	}
	if pid, err := cluster.ReadPID(pidFile); err == nil && cluster.Alive(pid) {
		return fmt.Errorf("a demo already runs (pid %d): isthmus-demo down first", pid)
	}
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
		return err
	}
	defer os.Remove(pidFile)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	began := time.Now()
	fmt.Fprintln(out, "Isthmus demo on real nodes: a broker and clusters a (eu), b (us), c (eu), the charts installed as the README says; echo runs in a and b, exported from both.")
	w, err := demo.UpOnNodes(ctx, demo.Options{Out: out,
		Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Fprintln(out, "tearing down: pods, nodes, clusters")
		w.Down()
		if left := w.Leftovers(); len(left) > 0 {
			fmt.Fprintln(out, "left behind:", strings.Join(left, ", "))
		} else {
			fmt.Fprintln(out, "nothing left behind")
		}
	}()
	res, err := w.Run(ctx)
	fmt.Fprintln(out)
	res.Summary(out)
	fmt.Fprintf(out, "\nwhole demo: %s\n", time.Since(began).Round(100*time.Millisecond))
	if err != nil && !keep {
		return err
	}
	if err != nil {
		fmt.Fprintln(out, "failed:", err)
	}
	if !keep {
		fmt.Fprintln(out, "\nrun with KEEP=1 to keep the clusterset up and look at it with kubectl and isthmusctl")
		return nil
	}
	fmt.Fprintf(out, `
kubeconfig with a context per cluster (broker, member1=a, member2=b, member3=c):
  export KUBECONFIG=%s
the demo's pods are real: exec into them and read their logs (each client logs one JSON line a request)
  kubectl --context member3 -n demo get pods -o wide
  kubectl --context member3 -n demo exec deploy/client -- /isthmus-demo-pod resolve %s
  kubectl --context member3 -n demo logs deploy/grpc-client --tail 3
  kubectl --context member1 -n isthmus-system logs deploy/isthmus-agent --tail 20
  kubectl --context member3 get serviceimports -A
  isthmusctl status --context member3
KEEP=1: the clusterset stays up; Ctrl-C or `+"`isthmus-demo down`"+` ends it
`, w.Clusters.Kubeconfig, demo.FQDN)
	<-ctx.Done()
	return nil
}

// down ends a running demo by its recorded PID; it tears itself down.
func down(out io.Writer) error {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return fmt.Errorf("no demo is running (%s): %w", pidFile, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("%s: %w", pidFile, err)
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return fmt.Errorf("stopping the demo (pid %d): %w", pid, err)
	}
	for range 600 {
		if !cluster.Alive(pid) {
			fmt.Fprintln(out, "demo stopped")
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("the demo (pid %d) did not stop within a minute", pid)
}
