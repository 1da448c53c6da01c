package server

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	grpcstatus "google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// gatewayKey stands for the gateway's private key in the gateway view's
// "default" Secret; no response to a non-gateway stream may carry it.
const gatewayKey = "-----BEGIN PRIVATE KEY-----gateway-----END PRIVATE KEY-----"

// startWithSecrets starts a server whose gateway view holds the key pair
// and whose gRPC view holds one listener, and which admits no client to
// the gateway view: in these tests every client is on loopback, which is
// no gateway pod.
func startWithSecrets(t *testing.T, cfg Config) *testServer {
	t.Helper()
	cfg.GatewayPeer = func(netip.Addr) bool { return false }
	s := startWith(t, cfg)
	secret := &tlsv3.Secret{Name: "default", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: []byte("chain")}},
		PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: []byte(gatewayKey)}},
	}}}
	if err := s.SetView(context.Background(), GatewayView, map[resource.Type][]types.Resource{
		resource.ListenerType: {&listenerv3.Listener{Name: "egress_16000"}},
		resource.SecretType:   {secret},
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetView(context.Background(), GRPCView, map[resource.Type][]types.Resource{
		resource.ListenerType: {&listenerv3.Listener{Name: "echo.demo.svc.clusterset.local"}},
	}); err != nil {
		t.Fatal(err)
	}
	return s
}

// carriesKey says whether any of resources holds the gateway's key.
func carriesKey(t *testing.T, resources []*anypb.Any) bool {
	t.Helper()
	for _, a := range resources {
		if bytes.Contains(a.GetValue(), []byte(gatewayKey)) {
			return true
		}
	}
	return false
}

// refusedWith waits for the stream to end and returns its status code,
// failing the test if any response before the end carries the key.
func refusedWith[Req, Resp any](t *testing.T, c *adsStream[Req, Resp], resources func(Resp) []*anypb.Any) codes.Code {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case r, ok := <-c.resps:
			if !ok {
				_, err := c.stream.Recv()
				return grpcstatus.Code(err)
			}
			if carriesKey(t, resources(r)) {
				t.Fatal("the gateway's private key was sent to a stream admitted as a gRPC client")
			}
		case <-deadline:
			t.Fatal("the stream was neither refused nor closed")
		}
	}
}

func sotwResources(r *discoveryv3.DiscoveryResponse) []*anypb.Any { return r.GetResources() }

func deltaResources(r *discoveryv3.DeltaDiscoveryResponse) []*anypb.Any {
	var out []*anypb.Any
	for _, res := range r.GetResources() {
		out = append(out, res.GetResource())
	}
	return out
}

// TestNodeFixedByFirstRequest: a stream admitted as a gRPC client that
// then names itself the gateway (or another node) on the same stream is
// refused with PermissionDenied and never sent the gateway's key, over
// state of the world and delta alike.
func TestNodeFixedByFirstRequest(t *testing.T) {
	for _, tc := range []struct {
		name  string
		later *corev3.Node
	}{
		{"role switch", node("client", "gateway", "a")},
		{"role dropped, Envoy user agent", &corev3.Node{Id: "client", UserAgentName: "envoy"}},
		{"another node id", node("other", "grpc", "a")},
	} {
		t.Run("sotw/"+tc.name, func(t *testing.T) {
			s := startWithSecrets(t, Config{})
			c := dialSotW(t, s.addr)
			c.send(&discoveryv3.DiscoveryRequest{Node: node("client", "grpc", "a"), TypeUrl: resource.ListenerType, ResourceNames: []string{"echo.demo.svc.clusterset.local"}})
			r := c.next(5 * time.Second)
			c.send(&discoveryv3.DiscoveryRequest{TypeUrl: resource.ListenerType, VersionInfo: r.VersionInfo, ResourceNames: []string{"echo.demo.svc.clusterset.local"}, ResponseNonce: r.Nonce})
			c.send(&discoveryv3.DiscoveryRequest{Node: tc.later, TypeUrl: resource.SecretType, ResourceNames: []string{"default"}})
			if code := refusedWith(t, c, sotwResources); code != codes.PermissionDenied {
				t.Errorf("the stream ended with %v, want PermissionDenied", code)
			}
			if got := testutil.ToFloat64(s.metrics.refused); got != 1 {
				t.Errorf("refused nodes counted %v, want 1", got)
			}
		})
		t.Run("delta/"+tc.name, func(t *testing.T) {
			s := startWithSecrets(t, Config{})
			c := dialDelta(t, s.addr)
			c.send(&discoveryv3.DeltaDiscoveryRequest{Node: node("client", "grpc", "a"), TypeUrl: resource.ListenerType, ResourceNamesSubscribe: []string{"echo.demo.svc.clusterset.local"}})
			r := c.next(5 * time.Second)
			c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.ListenerType, ResponseNonce: r.Nonce})
			c.send(&discoveryv3.DeltaDiscoveryRequest{Node: tc.later, TypeUrl: resource.SecretType, ResourceNamesSubscribe: []string{"default"}})
			if code := refusedWith(t, c, deltaResources); code != codes.PermissionDenied {
				t.Errorf("the stream ended with %v, want PermissionDenied", code)
			}
			if got := testutil.ToFloat64(s.metrics.refused); got != 1 {
				t.Errorf("refused nodes counted %v, want 1", got)
			}
		})
	}
}

// TestSameNodeRepeatedIsServed: a client that repeats its node on every
// request (Envoy's default) keeps its stream.
func TestSameNodeRepeatedIsServed(t *testing.T) {
	s := startWithSecrets(t, Config{})
	c := dialSotW(t, s.addr)
	names := []string{"echo.demo.svc.clusterset.local"}
	c.send(&discoveryv3.DiscoveryRequest{Node: node("client", "grpc", "a"), TypeUrl: resource.ListenerType, ResourceNames: names})
	r := c.next(5 * time.Second)
	c.send(&discoveryv3.DiscoveryRequest{Node: node("client", "grpc", "a"), TypeUrl: resource.ListenerType, VersionInfo: r.VersionInfo, ResourceNames: names, ResponseNonce: r.Nonce})
	if err := s.SetView(context.Background(), GRPCView, map[resource.Type][]types.Resource{
		resource.ListenerType: {&listenerv3.Listener{Name: "echo.demo.svc.clusterset.local", StatPrefix: "changed"}},
	}); err != nil {
		t.Fatal(err)
	}
	if r := c.next(5 * time.Second); len(r.GetResources()) != 1 {
		t.Errorf("the changed listener came as %d resources, want 1", len(r.GetResources()))
	}
	if got := testutil.ToFloat64(s.metrics.refused); got != 0 {
		t.Errorf("refused nodes counted %v, want 0", got)
	}
}

// TestSotWAndDeltaStreamsAreApart: go-control-plane numbers SotW and
// delta streams each from 1, so a delta stream must not inherit the node
// a SotW stream of the same number was admitted with.
func TestSotWAndDeltaStreamsAreApart(t *testing.T) {
	s := startWithSecrets(t, Config{})
	c := dialSotW(t, s.addr)
	names := []string{"echo.demo.svc.clusterset.local"}
	c.send(&discoveryv3.DiscoveryRequest{Node: node("client", "grpc", "a"), TypeUrl: resource.ListenerType, ResourceNames: names})
	r := c.next(5 * time.Second)
	c.send(&discoveryv3.DiscoveryRequest{TypeUrl: resource.ListenerType, VersionInfo: r.VersionInfo, ResourceNames: names, ResponseNonce: r.Nonce})
	d := dialDelta(t, s.addr)
	d.send(&discoveryv3.DeltaDiscoveryRequest{Node: node("client", "gateway", "a"), TypeUrl: resource.SecretType, ResourceNamesSubscribe: []string{"default"}})
	if code := refusedWith(t, d, deltaResources); code != codes.PermissionDenied {
		t.Errorf("the delta stream ended with %v, want PermissionDenied", code)
	}
	// The SotW stream is unaffected.
	if err := s.SetView(context.Background(), GRPCView, map[resource.Type][]types.Resource{
		resource.ListenerType: {&listenerv3.Listener{Name: "echo.demo.svc.clusterset.local", StatPrefix: "changed"}},
	}); err != nil {
		t.Fatal(err)
	}
	c.next(5 * time.Second)
}

// TestStreamCap: streams beyond the server's cap are refused with
// ResourceExhausted and counted; a closed stream frees its place.
func TestStreamCap(t *testing.T) {
	s := startWithSecrets(t, Config{MaxStreams: 2})
	names := []string{"echo.demo.svc.clusterset.local"}
	open := func() (*sotwClient, context.CancelFunc) {
		ads, ctx := adsClient(t, s.addr)
		ctx, cancel := context.WithCancel(ctx)
		st, err := ads.StreamAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		c := &sotwClient{t: t, stream: st, resps: pump(st.Recv)}
		// A stream refused at once may be closed before this is sent.
		_ = st.Send(&discoveryv3.DiscoveryRequest{Node: node("client", "grpc", "a"), TypeUrl: resource.ListenerType, ResourceNames: names})
		return c, cancel
	}
	first, closeFirst := open()
	first.next(5 * time.Second)
	second, _ := open()
	second.next(5 * time.Second)
	third, _ := open()
	if code := refusedWith(t, third, sotwResources); code != codes.ResourceExhausted {
		t.Errorf("the third stream ended with %v, want ResourceExhausted", code)
	}
	d := dialDelta(t, s.addr)
	_ = d.stream.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node("client", "grpc", "a"), TypeUrl: resource.ListenerType, ResourceNamesSubscribe: names})
	if code := refusedWith(t, d, deltaResources); code != codes.ResourceExhausted {
		t.Errorf("a delta stream over the cap ended with %v, want ResourceExhausted", code)
	}
	if got := testutil.ToFloat64(s.metrics.limited.WithLabelValues("streams")); got != 2 {
		t.Errorf("streams over the cap counted %v, want 2", got)
	}
	closeFirst()
	// The server learns of the close asynchronously.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, _ := open()
		select {
		case r, ok := <-c.resps:
			if ok && len(r.GetResources()) == 1 {
				return
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no response on a stream opened after another closed")
		}
		if time.Now().After(deadline) {
			t.Fatal("a closed stream did not free its place")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestNamesPerRequestCap: a request subscribing to more names than the
// cap is refused with ResourceExhausted, over SotW and delta.
func TestNamesPerRequestCap(t *testing.T) {
	s := startWithSecrets(t, Config{MaxNamesPerRequest: 10})
	names := make([]string, 11)
	for i := range names {
		names[i] = fmt.Sprint("svc-", i)
	}
	c := dialSotW(t, s.addr)
	c.send(&discoveryv3.DiscoveryRequest{Node: node("client", "grpc", "a"), TypeUrl: resource.EndpointType, ResourceNames: names[:10]})
	c.send(&discoveryv3.DiscoveryRequest{TypeUrl: resource.ListenerType, ResourceNames: names})
	if code := refusedWith(t, c, sotwResources); code != codes.ResourceExhausted {
		t.Errorf("the SotW stream ended with %v, want ResourceExhausted", code)
	}
	d := dialDelta(t, s.addr)
	d.send(&discoveryv3.DeltaDiscoveryRequest{Node: node("client", "grpc", "a"), TypeUrl: resource.EndpointType, ResourceNamesSubscribe: names[:5], InitialResourceVersions: map[string]string{"a": "1", "b": "1", "c": "1", "d": "1", "e": "1", "f": "1"}})
	if code := refusedWith(t, d, deltaResources); code != codes.ResourceExhausted {
		t.Errorf("the delta stream ended with %v, want ResourceExhausted", code)
	}
	if got := testutil.ToFloat64(s.metrics.limited.WithLabelValues("names")); got != 2 {
		t.Errorf("requests over the names cap counted %v, want 2", got)
	}
}

// TestUnknownTypesBounded: type URLs a client makes up are counted as
// "other", never as labels of their own, and a stream may not open
// watches for more types than exist.
func TestUnknownTypesBounded(t *testing.T) {
	s := startWithSecrets(t, Config{})
	c := dialSotW(t, s.addr)
	c.send(&discoveryv3.DiscoveryRequest{Node: node("client", "grpc", "a"), TypeUrl: resource.ListenerType})
	c.next(5 * time.Second)
	for i := 0; i < 3; i++ {
		c.send(&discoveryv3.DiscoveryRequest{TypeUrl: fmt.Sprintf("type.googleapis.com/made.up.T%d", i), ErrorDetail: &status.Status{Code: 3, Message: "x"}})
	}
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(s.metrics.nacks.WithLabelValues("other")) != 3 {
		if time.Now().After(deadline) {
			t.Fatalf("NACKs of made-up types counted as other: %v, want 3", testutil.ToFloat64(s.metrics.nacks.WithLabelValues("other")))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := testutil.CollectAndCount(s.metrics.nacks); n != 1 {
		t.Errorf("the NACK counter has %d label sets, want 1 (other)", n)
	}
	for i := 3; i < 2*maxTypesPerStream; i++ {
		if err := c.stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: fmt.Sprintf("type.googleapis.com/made.up.T%d", i)}); err != nil {
			break // refused already
		}
	}
	if code := refusedWith(t, c, sotwResources); code != codes.ResourceExhausted {
		t.Errorf("a stream asking for %d types ended with %v, want ResourceExhausted", 2*maxTypesPerStream, code)
	}
}

// syncBuffer is a log sink safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestLoggedClientFieldsBounded: a node id, user agent, metadata, type
// URL and NACK message of 64 KiB each reach the log clipped.
func TestLoggedClientFieldsBounded(t *testing.T) {
	var logs syncBuffer
	s := startWithSecrets(t, Config{Log: slog.New(slog.NewTextHandler(&logs, nil))})
	huge := strings.Repeat("x", 64<<10)
	n := node(huge, "grpc", "a")
	n.UserAgentName = huge
	c := dialSotW(t, s.addr)
	c.send(&discoveryv3.DiscoveryRequest{Node: n, TypeUrl: resource.ListenerType})
	r := c.next(5 * time.Second)
	c.send(&discoveryv3.DiscoveryRequest{TypeUrl: resource.ListenerType, ResponseNonce: r.Nonce, ErrorDetail: &status.Status{Code: 3, Message: huge}})
	c.send(&discoveryv3.DiscoveryRequest{TypeUrl: "type.googleapis.com/" + huge, ErrorDetail: &status.Status{Code: 3, Message: huge}})
	// A refused node: its role and cluster are quoted in the refusal.
	bad := dialSotW(t, s.addr)
	bad.send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: huge, Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
		MetadataRole: structpb.NewStringValue(huge), MetadataCluster: structpb.NewStringValue("a"),
	}}}, TypeUrl: resource.ListenerType})
	refusedWith(t, bad, sotwResources)
	other := dialSotW(t, s.addr)
	other.send(&discoveryv3.DiscoveryRequest{Node: node("n", "grpc", huge), TypeUrl: resource.ListenerType})
	refusedWith(t, other, sotwResources)
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(logs.String(), "\n") < 5 {
		if time.Now().After(deadline) {
			t.Fatalf("%d log lines, want 5 (connected, 2 NACKs, 2 refusals)", strings.Count(logs.String(), "\n"))
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, line := range strings.Split(logs.String(), "\n") {
		if len(line) > 4<<10 {
			t.Errorf("a log line of %d bytes: %.300s…", len(line), line)
		}
	}
}

// TestLibraryWarningsClipped: go-control-plane's warnings and errors,
// which quote client-chosen type URLs and subscriptions, reach the log
// clipped.
func TestLibraryWarningsClipped(t *testing.T) {
	var logs syncBuffer
	a := logAdapter{slog.New(slog.NewTextHandler(&logs, nil))}
	huge := strings.Repeat("x", 1<<20)
	a.Warnf("[sotw] Watch rejected for type %s and stream %d", huge, 1)
	a.Errorf("failed to send a response for %s%v", huge, []string{huge})
	if n := strings.Count(logs.String(), "\n"); n != 2 {
		t.Fatalf("%d log lines, want 2", n)
	}
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		if len(line) > 4<<10 {
			t.Errorf("a log line of %d bytes", len(line))
		}
	}
}
