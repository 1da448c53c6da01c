package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"

	"k8s.io/klog/v2"
)

// logFlags are --log-level and --log-format, which every role takes.
type logFlags struct {
	level  slog.Level
	format string
}

func (l *logFlags) register(fs *flag.FlagSet) {
	fs.TextVar(&l.level, "log-level", slog.LevelInfo, "least severe log level written: debug, info, warn or error")
	fs.StringVar(&l.format, "log-format", "json", "log format: json (one object a line) or text (key=value)")
}

// newLogger writes to w in the format and from the level the flags name,
// and routes client-go's own log lines (klog) into it, so that leader
// election's and the informers' messages come out in the same format,
// not as klog text between the JSON lines.
func newLogger(w io.Writer, l logFlags) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: l.level}
	var h slog.Handler
	switch l.format {
	case "json":
		h = slog.NewJSONHandler(w, opts)
	case "text":
		h = slog.NewTextHandler(w, opts)
	default:
		return nil, fmt.Errorf("--log-format %q: want json or text", l.format)
	}
	log := slog.New(h)
	klog.SetSlogLogger(log)
	return log, nil
}
