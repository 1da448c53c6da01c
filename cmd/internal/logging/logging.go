// Package logging is the --log-level and --log-format flags that the
// daemon's roles and isthmusctl share, and the logger they make: slog,
// with client-go's own lines (klog) routed through it so that leader
// election's, the informers' and the request tracer's messages come out
// in the same format instead of as klog text between the JSON lines.
package logging

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"

	"k8s.io/klog/v2"
)

// Flags are --log-level and --log-format.
type Flags struct {
	Level  slog.Level
	Format string
}

// Register adds the two flags to fs, the format defaulting to
// defaultFormat: json for the daemon, whose lines a log pipeline reads,
// text for a person at a terminal. isthmusctl's pflag set takes them
// with AddGoFlagSet, so both binaries parse them with the same code.
func (f *Flags) Register(fs *flag.FlagSet, defaultFormat string) {
	fs.TextVar(&f.Level, "log-level", slog.LevelInfo, "least severe log level written: debug, info, warn or error; debug-N (debug-2, ...) also shows client-go's verbosity 4+N (debug-2: every request to an apiserver)")
	fs.StringVar(&f.Format, "log-format", defaultFormat, "log format: json (one object a line) or text (key=value)")
}

// New returns a logger writing to w in the format and from the level f
// names, and makes it klog's: client-go's lines at verbosity V go
// through it at level -V (logr's convention), so --log-level debug
// (-4) lets client-go's V(4) and below through and debug-2 (-6) its
// request and response lines. klog's logger is process-wide: call New
// once, before anything logs, in a process's main path; tests that run
// a command in-process use Logger.
func New(w io.Writer, f Flags) (*slog.Logger, error) {
	log, err := Logger(w, f)
	if err != nil {
		return nil, err
	}
	// klog decides by its own -v whether a V(n) line is made at all;
	// make the lines the level lets through.
	if err := setKlogVerbosity(klogVerbosity(f.Level)); err != nil {
		return nil, err
	}
	klog.SetSlogLogger(log)
	return log, nil
}

// Logger is New without klog: a logger for this code's own lines only.
func Logger(w io.Writer, f Flags) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: f.Level}
	switch f.Format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want json or text", f.Format)
}

// klogVerbosity is the klog -v at which every V(n) line the level lets
// through is made: logr's V(n) is slog level -n.
func klogVerbosity(l slog.Level) int {
	if l >= 0 {
		return 0
	}
	return int(-l)
}

func setKlogVerbosity(v int) error {
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	return fs.Set("v", strconv.Itoa(v))
}
