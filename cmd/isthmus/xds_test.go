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

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/isthmus-dev/isthmus/xds/model"
	"github.com/isthmus-dev/isthmus/xds/server"
	"github.com/isthmus-dev/isthmus/xds/translate"
)

func TestXDSRoleFlagErrors(t *testing.T) {
	for _, args := range [][]string{
		{"--dataplane", "sidecar"},
		{"--gateway-ingress-port", "0"},
		{"--ca-secret", "no-slash", "--kubeconfig", "/nonexistent"},
		{"--workload-certs", "bad", "--kubeconfig", "/nonexistent"},
		{"--gateway-service", "no-slash", "--kubeconfig", "/nonexistent"},
		{"--gateway-service", "a/b/c", "--kubeconfig", "/nonexistent"},
		{"--tls", "sometimes", "--kubeconfig", "/nonexistent"},
		{"--grpc-auth", "maybe", "--kubeconfig", "/nonexistent"},
		{"--server-identity", "no-slash", "--kubeconfig", "/nonexistent"},
		{"--gateway-service-account", "no-slash", "--kubeconfig", "/nonexistent"},
		// TLS (any address but loopback, or --tls always) needs the CA.
		{"--listen", ":15010", "--ca-secret", "", "--kubeconfig", "/nonexistent"},
		{"--listen", "127.0.0.1:15010", "--tls", "always", "--ca-secret", "", "--kubeconfig", "/nonexistent"},
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

	// The gateway view (it carries the gateway's key) goes only to a pod
	// of the gateway Service (default isthmus-system/isthmus-gateway, absent
	// here): a client that merely says it is a gateway is refused. (That a
	// listed pod is admitted is xds/source's TestGatewayPods and
	// xds/server's TestGatewayViewOnlyForGatewayPods: an EndpointSlice may
	// not list a loopback address.)
	if err := askAsGateway(ctx, adsAddr); err == nil || !strings.Contains(err.Error(), "no pod of the gateway Service") {
		t.Errorf("a gateway node from a non-gateway address: %v, want refused", err)
	}
}

// askAsGateway opens an ADS stream as a gateway node of cluster c and
// waits for the first listener response.
func askAsGateway(ctx context.Context, addr string) error {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	n := &corev3.Node{Id: "gateway", Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
		server.MetadataRole: structpb.NewStringValue(string(server.GatewayView)), server.MetadataCluster: structpb.NewStringValue("c")}}}
	if err := st.Send(&discoveryv3.DiscoveryRequest{Node: n, TypeUrl: resource.ListenerType}); err != nil {
		return err
	}
	_, err = st.Recv()
	return err
}

// TestPlaintextADS: ADS is plaintext only on a loopback address with
// --tls auto.
func TestPlaintextADS(t *testing.T) {
	for _, tc := range []struct {
		mode, listen string
		plain, err   bool
	}{
		{"auto", "127.0.0.1:15010", true, false},
		{"auto", "[::1]:15010", true, false},
		{"auto", "localhost:15010", true, false},
		{"auto", ":15010", false, false},
		{"auto", "0.0.0.0:15010", false, false},
		{"auto", "10.0.0.7:15010", false, false},
		{"auto", "isthmus-xds:15010", false, false},
		{"always", "127.0.0.1:15010", false, false},
		{"never", "127.0.0.1:15010", false, true},
		{"auto", "no-port", false, true},
	} {
		plain, err := plaintextADS(tc.mode, tc.listen)
		if plain != tc.plain || (err != nil) != tc.err {
			t.Errorf("--tls %s --listen %s: plaintext %v, %v", tc.mode, tc.listen, plain, err)
		}
	}
}

func keyOf(ns, name string) model.Key { return model.Key{Namespace: ns, Name: name} }
