package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/isthmus-dev/isthmus/cmd/internal/probe"
)

// runProbe is the hidden `isthmus probe serve|client`: what the pods of
// `isthmusctl verify` run, from the image the chart runs, so verify needs
// no image of its own. Not a role: no cluster, no metrics, no logger.
func runProbe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New("usage: isthmus probe serve|client [flags] (for isthmusctl verify)")
	}
	fs := flag.NewFlagSet("isthmus probe "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	switch args[0] {
	case "serve":
		listen := fs.String("listen", ":8080", "TCP address to answer on")
		reply := fs.String("reply", "", "the line every connection is answered with: this cluster's id")
		if err := parseWithEnv(fs, args[1:], func(string) (string, bool) { return "", false }); err != nil {
			return err
		}
		lis, err := net.Listen("tcp", *listen)
		if err != nil {
			return err
		}
		return probe.Serve(ctx, lis, *reply)
	case "client":
		var cfg probe.ClientConfig
		fs.StringVar(&cfg.Name, "name", "", "the name to resolve with this pod's resolver, then connect to")
		fs.IntVar(&cfg.Port, "port", 80, "the port to connect to")
		fs.DurationVar(&cfg.Every, "every", 200*time.Millisecond, "time between attempts")
		fs.DurationVar(&cfg.Timeout, "timeout", time.Second, "bound of each lookup and connection")
		fs.DurationVar(&cfg.For, "for", 10*time.Minute, "how long to keep connecting")
		if err := parseWithEnv(fs, args[1:], func(string) (string, bool) { return "", false }); err != nil {
			return err
		}
		if cfg.Name == "" {
			return errors.New("isthmus probe client: --name is required")
		}
		cfg.Lookup = net.DefaultResolver.LookupHost
		return probe.Client(ctx, cfg, stdout)
	}
	return fmt.Errorf("isthmus probe %q: want serve or client", args[0])
}
