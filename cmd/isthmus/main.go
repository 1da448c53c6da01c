// Command isthmus is the Isthmus daemon. Each role runs as a subcommand
// (`isthmus agent`, `isthmus dns`, `isthmus xds`, `isthmus tunnel`), with
// its flags documented by `isthmus <role> -h`.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
)

// role is one role's entry point: it parses its own flags from args and
// runs until ctx ends.
type role func(ctx context.Context, args []string, log *slog.Logger) error

// roles lists the roles this binary runs. Each lives in its own file.
func roles() map[string]role {
	return map[string]role{
		"agent":  runAgent,
		"dns":    dnsRole,
		"tunnel": tunnelRole,
		"xds":    xdsRole,
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: logLevel()}))
	if err := run(ctx, os.Args[1:], log, os.Stderr); err != nil {
		log.Error("exiting", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, log *slog.Logger, stderr io.Writer) error {
	all := roles()
	names := make([]string, 0, len(all))
	for n := range all {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(args) == 0 || all[args[0]] == nil {
		fmt.Fprintf(stderr, "usage: isthmus <role> [flags]\nroles: %s\n", strings.Join(names, ", "))
		if len(args) == 0 {
			return fmt.Errorf("no role given")
		}
		return fmt.Errorf("unknown role %q", args[0])
	}
	return all[args[0]](ctx, args[1:], log.With("role", args[0]))
}

// logLevel reads ISTHMUS_LOG_LEVEL (debug, info, warn, error; default info).
func logLevel() slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(os.Getenv("ISTHMUS_LOG_LEVEL"))); err != nil {
		return slog.LevelInfo
	}
	return l
}
