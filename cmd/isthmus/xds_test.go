package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/isthmus-dev/isthmus/xds/model"
	"github.com/isthmus-dev/isthmus/xds/translate"
)

func TestXDSRoleFlagErrors(t *testing.T) {
	for _, args := range [][]string{
		{"--dataplane", "sidecar"},
		{"--gateway-ingress-port", "0"},
		{"--ca-secret", "no-slash", "--kubeconfig", "/nonexistent"},
		{"--workload-certs", "bad", "--kubeconfig", "/nonexistent"},
		{"extra-arg"},
		{"--no-such-flag"},
		{"--kubeconfig", "/nonexistent/kubeconfig"},
	} {
		if err := runXDS(context.Background(), args, slog.New(slog.NewTextHandler(io.Discard, nil))); err == nil {
			t.Errorf("%v: accepted", args)
		}
	}
}

// TestXDSRole runs `isthmus xds` for member c against the real clusterset
// and checks, through its debug endpoint, that a service exported from a
// (same region as c) is translated from the real imports and slices: a
// gRPC listener for the dial target and an assignment with a's pods.
func TestXDSRole(t *testing.T) {
	clusterset(t)
	ctx := ctxFor(t, 3*time.Minute)
	namespace(t, ctx, "xdsdemo", 0, 1, 2)
	workload(t, ctx, 0, "xdsdemo", "greeter", 2, false, port{"grpc", "TCP", 50051})
	exportService(t, ctx, 0, "xdsdemo", "greeter", nil, nil)

	metrics, debug, adsAddr := freePort(t), freePort(t), freePort(t)
	rctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("role", "xds")
	go func() {
		done <- runXDS(rctx, []string{"--kubeconfig", clusters.Members[2].Kubeconfig, "--region", "eu", "--ca-secret", "",
			"--listen", adsAddr, "--metrics-addr", metrics, "--debug-addr", debug}, log)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("xds role: %v", err)
		}
	}()
	eventually(t, time.Minute, "the xds role ready", func() error {
		if code, body := get("http://" + metrics + "/readyz"); code != http.StatusOK {
			return fmt.Errorf("readyz %d: %s", code, body)
		}
		return nil
	})
	// The role can be ready before KWOK has given the pods their IPs.
	var pods []string
	eventually(t, time.Minute, "a's two greeter pods have IPs", func() error {
		if pods = podIPs(ctx, t, 0, "xdsdemo", "greeter"); len(pods) != 2 {
			return fmt.Errorf("a's greeter pods: %v", pods)
		}
		return nil
	})
	listener := "greeter.xdsdemo.svc.clusterset.local"
	eventually(t, time.Minute, "greeter translated with a's pods", func() error {
		code, body := get("http://" + debug + "/debug/xds?view=grpc")
		if code != http.StatusOK {
			return fmt.Errorf("debug %d: %s", code, body)
		}
		for _, want := range append([]string{`"name": "` + listener + `"`, translate.DirectCluster(keyOf("xdsdemo", "greeter"), 50051)}, pods...) {
			if !strings.Contains(body, want) {
				return fmt.Errorf("no %s in the grpc view yet", want)
			}
		}
		return nil
	})
	// The metrics say what is served.
	if code, body := get("http://" + metrics + "/metrics"); code != http.StatusOK || !strings.Contains(body, `isthmus_xds_resources{type="Listener",view="grpc"}`) {
		t.Errorf("metrics %d lack isthmus_xds_resources for the gRPC view", code)
	}
	// The debug endpoint refuses a view it does not know.
	if code, _ := get("http://" + debug + "/debug/xds?view=sidecar"); code != http.StatusBadRequest {
		t.Errorf("unknown view answered %d", code)
	}
}

func keyOf(ns, name string) model.Key { return model.Key{Namespace: ns, Name: name} }
