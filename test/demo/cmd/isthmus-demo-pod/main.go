// Command isthmus-demo-pod is what the demo's pods run on real nodes (the
// image isthmus.test/demo-pod, built from the tree): the echo server, the
// TCP client that sends a request every interval, the proxyless gRPC
// client, and one-shot requests and lookups for `kubectl exec`. The
// clients write one JSON line per request (test/demo/pod.Result) to
// stdout, the pod's log, which the demo reads.
//
//	isthmus-demo-pod serve --cluster ID [--listen :8080]
//	isthmus-demo-pod load --target HOST:PORT [--interval 50ms] [--timeout 300ms]
//	isthmus-demo-pod grpc --target NAME [--interval 50ms]
//	isthmus-demo-pod request --target HOST:PORT [--timeout 2s]
//	isthmus-demo-pod resolve NAME
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"

	"github.com/isthmus-dev/isthmus/test/demo/pod"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "isthmus-demo-pod:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, out io.Writer) error {
	if len(args) == 0 {
		return errors.New("usage: isthmus-demo-pod serve|load|grpc|request|resolve [flags]")
	}
	fs := flag.NewFlagSet("isthmus-demo-pod "+args[0], flag.ContinueOnError)
	cluster := fs.String("cluster", "", "serve: the cluster id the echo answers with")
	listen := fs.String("listen", ":8080", "serve: the address to listen on")
	target := fs.String("target", "", "load, request: HOST:PORT; grpc: the xds:/// target's name")
	interval := fs.Duration("interval", 50*time.Millisecond, "load, grpc: time between requests")
	timeout := fs.Duration("timeout", 300*time.Millisecond, "load, request: each request's bound")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	switch args[0] {
	case "serve":
		if *cluster == "" {
			return errors.New("serve needs --cluster")
		}
		l, err := net.Listen("tcp", *listen)
		if err != nil {
			return err
		}
		// Plaintext gRPC: the pods have no workload certificate on real
		// nodes (see the README).
		gs := grpc.NewServer()
		pod.RegisterEcho(gs, *cluster)
		stop := pod.Serve(l, *cluster, gs, pod.IsH2C)
		<-ctx.Done()
		stop()
		return nil
	case "load":
		return pod.Load(ctx, *target, *interval, *timeout, out)
	case "grpc":
		// TLS when the xDS cluster asks for it, else plaintext.
		creds, err := xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: insecure.NewCredentials()})
		if err != nil {
			return err
		}
		return pod.GRPCClient(*target, *interval, creds, ctx.Done(), out)
	case "request":
		c, p, err := pod.Request(ctx, *target, *timeout)
		if err != nil {
			return err
		}
		fmt.Fprintln(out, c, p)
		return nil
	case "resolve":
		if fs.NArg() != 1 {
			return errors.New("resolve needs one name")
		}
		addrs, err := net.DefaultResolver.LookupHost(ctx, fs.Arg(0))
		if err != nil {
			return err
		}
		for _, a := range addrs {
			fmt.Fprintln(out, a)
		}
		return nil
	}
	return fmt.Errorf("unknown command %q", args[0])
}
