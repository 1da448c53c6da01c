// Command isthmus-demo runs the Isthmus demo (`make demo`, `isthmusctl
// demo up`): it builds a local clusterset, narrates the scenario with its
// timings, prints a summary and the kubeconfigs, and tears everything
// down on exit or Ctrl-C; with KEEP=1 it keeps the clusterset up until
// Ctrl-C or `isthmus-demo down`.
//
//	isthmus-demo up [--bin dir]
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

	"github.com/isthmus-dev/isthmus/test/demo"
)

// pidFile records the running demo, for `down` from another shell.
var pidFile = filepath.Join(os.TempDir(), "isthmus-demo.pid")

func main() {
	// The demo runs this program again, in c's node namespace, as its
	// proxyless gRPC client.
	demo.ClientMain()
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "isthmus-demo:", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	if len(args) == 0 {
		return errors.New("usage: isthmus-demo up [--bin dir] | down")
	}
	switch args[0] {
	case "up":
		fs := flag.NewFlagSet("isthmus-demo up", flag.ContinueOnError)
		bin := fs.String("bin", besideMe(), "directory holding isthmus and isthmusctl (default: this program's, if they are there; else build them)")
		keep := fs.Bool("keep", os.Getenv("KEEP") == "1", "keep the clusterset up after the scenario, until Ctrl-C (KEEP=1)")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		return up(*bin, *keep, out)
	case "down":
		return down(out)
	default:
		return fmt.Errorf("unknown command %q: want up or down", args[0])
	}
}

func up(bin string, keep bool, out io.Writer) error {
	if b, err := os.ReadFile(pidFile); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && syscall.Kill(pid, 0) == nil {
			return fmt.Errorf("a demo already runs (pid %d): isthmus-demo down first", pid)
		}
	}
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
		return err
	}
	defer os.Remove(pidFile)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	began := time.Now()
	fmt.Fprintln(out, "Isthmus demo: a broker and clusters a (eu), b (us), c (eu); echo runs in a and b, exported from both.")
	w, err := demo.Up(ctx, demo.Options{BinDir: bin, Out: out,
		Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Fprintln(out, "tearing down: processes, namespaces, interfaces")
		w.Down()
		if left := demo.Leftovers(); len(left) > 0 {
			fmt.Fprintln(out, "left behind:", strings.Join(left, ", "))
		}
	}()
	res, err := w.Run(ctx)
	fmt.Fprintln(out)
	res.Summary(out)
	fmt.Fprintf(out, "\nwhole demo: %s\n", time.Since(began).Round(100*time.Millisecond))
	if err != nil {
		for _, m := range w.Members {
			fmt.Fprintf(out, "isthmus log of %s: %s\n", m.ID, m.IsthmusLog())
			if st, err := os.Stat(m.GRPCClientLog()); err == nil && st.Size() > 0 {
				fmt.Fprintf(out, "gRPC client log of %s: %s\n", m.ID, m.GRPCClientLog())
			}
		}
		if !keep {
			return err
		}
		fmt.Fprintln(out, "failed:", err)
	}
	if !keep {
		fmt.Fprintln(out, "\nrun with KEEP=1 to keep the clusterset up and look at it with kubectl and isthmusctl")
		return nil
	}
	fmt.Fprintf(out, "\nkubeconfig with a context per cluster (broker, member1=a, member2=b, member3=c):\n  export KUBECONFIG=%s\n", w.Clusters.Kubeconfig)
	fmt.Fprintf(out, "  kubectl --context member3 get serviceimports -A\n  isthmusctl status --context member3\n  isthmusctl diagnose echo.demo --context member2\n")
	{
		fmt.Fprintln(out, "KEEP=1: the clusterset stays up; Ctrl-C or `isthmus-demo down` ends it")
		<-ctx.Done()
	}
	return nil
}

// besideMe is this program's directory when isthmus and isthmusctl are
// there too (make build puts all three in bin/), else "".
func besideMe() string {
	self, err := os.Executable()
	if err != nil {
		return ""
	}
	dir := filepath.Dir(self)
	for _, b := range []string{"isthmus", "isthmusctl"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			return ""
		}
	}
	return dir
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
		if syscall.Kill(pid, 0) != nil {
			fmt.Fprintln(out, "demo stopped")
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("the demo (pid %d) did not stop within a minute", pid)
}
