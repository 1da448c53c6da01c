package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/spf13/cobra"
)

// demoBinary is the demo program, built beside isthmusctl by `make build`.
// It lives under test/demo because it drives the test harness, which
// product code must not import.
const demoBinary = "isthmus-demo"

// demoCommand is `isthmusctl demo up|down`: it runs the demo program,
// found next to isthmusctl or on PATH, with the same arguments.
func demoCommand() *cobra.Command {
	return &cobra.Command{
		Use:       "demo up|down",
		Short:     "run the local demo clusterset (root; KEEP=1 keeps it up)",
		ValidArgs: []string{"up", "down"},
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
				return nil
			}
			if len(args) == 0 || (args[0] != "up" && args[0] != "down") {
				return fmt.Errorf("usage: isthmusctl demo up|down (up: KEEP=1 keeps the clusterset running)")
			}
			return nil
		},
		// The demo program has flags of its own (--bin): pass them on.
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if args[0] == "-h" || args[0] == "--help" {
				return cmd.Help()
			}
			bin, err := findDemo()
			if err != nil {
				return err
			}
			c := exec.CommandContext(cmd.Context(), bin, args...)
			c.Stdout, c.Stderr, c.Stdin = cmd.OutOrStdout(), cmd.ErrOrStderr(), os.Stdin
			// Ctrl-C reaches the demo through the terminal's process group; on
			// our own cancellation it gets SIGTERM and time to tear down.
			c.Cancel = func() error { return c.Process.Signal(os.Interrupt) }
			if err := c.Run(); err != nil {
				return fmt.Errorf("%s %s: %w", bin, args[0], err)
			}
			return nil
		},
	}
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
