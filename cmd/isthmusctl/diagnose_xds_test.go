package main

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/prometheus/client_golang/prometheus"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/isthmus-dev/isthmus/xds/model"
	"github.com/isthmus-dev/isthmus/xds/server"
	"github.com/isthmus-dev/isthmus/xds/translate"
)

// serveXDS runs the real xDS server of cluster a, in plaintext, with the
// translation of svc (if any) and returns its address.
func serveXDS(t *testing.T, mode model.Mode, clusters map[string]*model.Cluster, svc *model.Service) string {
	return serveXDSWith(t, server.Config{}, nil, mode, clusters, svc)
}

// serveXDSWith is serveXDS with the server's authentication (cfg's
// Authenticator and GatewayServiceAccount) and TLS (nil: plaintext).
func serveXDSWith(t *testing.T, cfg server.Config, tlsConfig *tls.Config, mode model.Mode, clusters map[string]*model.Cluster, svc *model.Service) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	cfg.ClusterID, cfg.Log, cfg.Registry = "a", slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry()
	srv, err := server.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	local := model.Local{ClusterID: "a", Region: "eu", Zone: "eu-1", ClustersetDomain: "clusterset.isthmus", Mode: mode, IngressPort: 15443}
	var bundles []*translate.Bundle
	eds := map[string]types.Resource{}
	if svc != nil {
		b, err := translate.ForService(local, clusters, svc)
		if err != nil {
			t.Fatal(err)
		}
		bundles = append(bundles, b)
		for n, e := range b.Endpoints {
			eds[n] = e
		}
	}
	if err := srv.SetView(ctx, server.GRPCView, translate.GRPCResources(bundles)); err != nil {
		t.Fatal(err)
	}
	gw, err := translate.GatewayResources(local, bundles, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.SetView(ctx, server.GatewayView, gw); err != nil {
		t.Fatal(err)
	}
	if err := srv.UpdateEndpoints(eds); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = srv.ServeTLS(ctx, lis, tlsConfig); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return lis.Addr().String()
}

// twoClusters are clusters a (eu, this one) and b (us), b healthy or not.
func twoClusters(healthyB bool) map[string]*model.Cluster {
	return map[string]*model.Cluster{
		"a": {ID: "a", Region: "eu", Zone: "eu-1", Gateways: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:15443")}, Healthy: true},
		"b": {ID: "b", Region: "us", Zone: "us-1", Gateways: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.2:15443")}, Healthy: healthyB},
	}
}

// echoService is demo/echo exported by a (two pods) and b (one), each
// cluster's pods ready or not.
func echoService(readyA, readyB bool) *model.Service {
	ep := func(ip string, ready bool) model.Endpoint {
		return model.Endpoint{Address: netip.MustParseAddr(ip), Ready: ready, Ports: map[string]int32{"tcp": 8080}}
	}
	return &model.Service{
		Key: model.Key{Namespace: "demo", Name: "echo"}, Type: model.ClusterSetIP, MTLS: true,
		Ports: []model.Port{{Name: "tcp", Protocol: model.TCP, Port: 80, Egress: 16000}},
		Endpoints: map[string][]model.Endpoint{
			"a": {ep("10.241.0.10", readyA), ep("10.241.0.11", readyA)},
			"b": {ep("10.242.0.10", readyB)},
		},
	}
}

// TestDiagnoseXDS asks the real xDS server what a proxyless gRPC client
// of demo/echo gets, in both data-plane modes, and checks that diagnose
// says so, or says what is wrong.
func TestDiagnoseXDS(t *testing.T) {
	healthy, echo := twoClusters, echoService
	ports := []mcsv1beta1.ServicePort{{Name: "tcp", Protocol: "TCP", Port: 80}}
	const check = "xds echo.demo.svc.clusterset.local:80"
	for _, tc := range []struct {
		name   string
		id     string
		egress string // the import's egress ports annotation (gateway mode)
		addr   func(t *testing.T) string
		ok     bool
		detail []string
		advice string
	}{
		{name: "direct mode, both clusters serve", id: "a",
			addr: func(t *testing.T) string { return serveXDS(t, model.Direct, healthy(true), echo(true, true)) }, ok: true,
			detail: []string{"outbound|80||echo.demo.svc.clusterset.local (mTLS)", "priority 0 a 2/2 healthy", "priority 1 b 1/1 healthy"}},
		{name: "gateway mode: local pods, then the other gateways", id: "a", egress: "TCP/80=16000",
			addr: func(t *testing.T) string { return serveXDS(t, model.Gateway, healthy(true), echo(true, true)) }, ok: true,
			detail: []string{"= [local|80||echo.demo.svc.clusterset.local (plaintext): priority 0 a 2/2 healthy then remote|80||echo.demo.svc.clusterset.local (mTLS): priority 0 b 1/1 healthy]"}},
		{name: "a's pods down and b unhealthy: nothing to serve", id: "a",
			addr:   func(t *testing.T) string { return serveXDS(t, model.Direct, healthy(false), echo(false, true)) },
			detail: []string{"priority 0 a 0/2 healthy", "priority 1 b 0/1 healthy"}, advice: "no healthy endpoint"},
		{name: "the server has not seen the import", id: "a",
			addr:   func(t *testing.T) string { return serveXDS(t, model.Direct, healthy(true), nil) },
			detail: []string{"no listener for xds:///echo.demo.svc.clusterset.local:80"}, advice: "this cluster's id (a)"},
		{name: "the server serves another cluster", id: "zz",
			addr:   func(t *testing.T) string { return serveXDS(t, model.Direct, healthy(true), echo(true, true)) },
			detail: []string{`cluster "zz"`}, advice: "belongs to another cluster: point --xds-server at zz's own"},
		{name: "nothing listens", id: "a",
			addr:   closedPort,
			advice: "is `isthmus xds` running"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			d := &diagnosis{name: "echo", ns: "demo", id: tc.id, ports: ports, egress: tc.egress, xdsServer: tc.addr(t), xdsConn: xdsConnFlags{plaintext: true}}
			d.xds(ctx)
			want := 1
			if tc.egress != "" {
				want = 2
				// The gateway's egress port leads to the same pods first,
				// then b's gateway in mTLS.
				g := d.findings[len(d.findings)-1]
				if !g.OK || g.Check != "xds gateway :16000" ||
					!strings.Contains(g.Detail, "TCP/80: outbound|80||echo.demo.svc.clusterset.local (mTLS): priority 0 a 2/2 healthy, priority 1 b 1/1 healthy") {
					t.Errorf("gateway finding %+v", g)
				}
			}
			if len(d.findings) != want {
				t.Fatalf("findings %+v, want %d", d.findings, want)
			}
			f := d.findings[0]
			if f.OK != tc.ok || (f.Check != check && f.Check != "xds") {
				t.Errorf("finding %+v, want ok=%v for %q", f, tc.ok, check)
			}
			for _, want := range tc.detail {
				if !strings.Contains(f.Detail, want) {
					t.Errorf("detail %q lacks %q", f.Detail, want)
				}
			}
			if !strings.Contains(f.Advice, tc.advice) {
				t.Errorf("advice %q lacks %q", f.Advice, tc.advice)
			}
		})
	}

	t.Run("skipped without --xds-server", func(t *testing.T) {
		d := &diagnosis{name: "echo", ns: "demo", id: "a", ports: ports}
		d.xds(context.Background())
		if f := d.findings[0]; !f.OK || !strings.Contains(f.Detail, "--xds-server") {
			t.Errorf("finding %+v", f)
		}
	})
}
