package server

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
)

// TestServeStopsWithContext: Serve answers ADS until its context ends,
// then ends every open stream and returns nil (a stop is no failure).
func TestServeStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := New(ctx, Config{ClusterID: "a", Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, lis) }()

	ads, sctx := adsClient(t, lis.Addr().String())
	st, err := ads.StreamAggregatedResources(sctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discoveryv3.DiscoveryRequest{Node: node("n", "grpc", "a"), TypeUrl: resource.ListenerType}); err != nil {
		t.Fatal(err)
	}
	recvd := make(chan error, 1)
	go func() {
		for {
			if _, err := st.Recv(); err != nil {
				recvd <- err
				return
			}
		}
	}()
	for deadline := time.Now().Add(10 * time.Second); s.ConnectedNodes() != 1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the stream never opened on the server")
		}
	}

	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve after its context ended = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve still running 10s after its context ended")
	}
	select {
	case <-recvd:
	case <-time.After(10 * time.Second):
		t.Error("the client's stream outlived the server")
	}
	if _, err := net.DialTimeout("tcp", lis.Addr().String(), time.Second); err == nil {
		t.Error("the listener still accepts after Serve returned")
	}
}
