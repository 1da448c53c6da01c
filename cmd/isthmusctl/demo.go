package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
)

// demoBinary is the demo program, built beside isthmusctl by `make build`.
// It lives under test/demo because it drives the test harness, which
// product code must not import.
const demoBinary = "isthmus-demo"

// demo is `isthmusctl demo up|down`: it runs the demo program, found next
// to isthmusctl or on PATH, with the same arguments.
func demo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "up" && args[0] != "down") {
		return errors.New("usage: isthmusctl demo up|down (up: KEEP=1 keeps the clusterset running)")
	}
	bin, err := findDemo()
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr, cmd.Stdin = stdout, stderr, os.Stdin
	// Ctrl-C reaches the demo through the terminal's process group; on
	// our own cancellation it gets SIGTERM and time to tear down.
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w", bin, args[0], err)
	}
	return nil
}

func findDemo() (string, error) {
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), demoBinary)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath(demoBinary)
	if err != nil {
		return "", fmt.Errorf("%s is neither next to isthmusctl nor on PATH: run `make build` (or `make demo`) in the isthmus checkout", demoBinary)
	}
	return p, nil
}
