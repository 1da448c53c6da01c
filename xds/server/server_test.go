package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"
)

type testServer struct {
	*Server
	addr string
	reg  *prometheus.Registry
}

func start(t *testing.T) *testServer { return startWith(t, Config{}) }

// startWith starts a server of cluster a with cfg's other fields.
func startWith(t *testing.T, cfg Config) *testServer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	reg := prometheus.NewRegistry()
	cfg.ClusterID, cfg.Registry = "a", reg
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve(ctx, lis) }()
	return &testServer{Server: s, addr: lis.Addr().String(), reg: reg}
}

func node(id, role, cluster string) *corev3.Node {
	return &corev3.Node{Id: id, Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
		MetadataRole: structpb.NewStringValue(role), MetadataCluster: structpb.NewStringValue(cluster),
	}}}
}

func cla(name string, port uint32) *endpointv3.ClusterLoadAssignment {
	return &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{
		LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: "10.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}},
		}}}},
	}}}
}

// adsStream is a raw ADS stream, state of the world or delta, so the test
// sees every response.
type adsStream[Req, Resp any] struct {
	t      *testing.T
	stream interface {
		Send(Req) error
		Recv() (Resp, error)
	}
	resps chan Resp
}

type (
	sotwClient  = adsStream[*discoveryv3.DiscoveryRequest, *discoveryv3.DiscoveryResponse]
	deltaClient = adsStream[*discoveryv3.DeltaDiscoveryRequest, *discoveryv3.DeltaDiscoveryResponse]
)

// adsClient connects to addr and returns the ADS client, with a context
// ending with the test.
func adsClient(t *testing.T, addr string) (discoveryv3.AggregatedDiscoveryServiceClient, context.Context) {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return discoveryv3.NewAggregatedDiscoveryServiceClient(cc), ctx
}

// pump receives until the stream ends, then closes the channel.
func pump[R any](recv func() (R, error)) chan R {
	out := make(chan R, 1000)
	go func() {
		for {
			r, err := recv()
			if err != nil {
				close(out)
				return
			}
			out <- r
		}
	}()
	return out
}

func dialSotW(t *testing.T, addr string) *sotwClient {
	t.Helper()
	ads, ctx := adsClient(t, addr)
	st, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return &sotwClient{t: t, stream: st, resps: pump(st.Recv)}
}

func (c *adsStream[Req, Resp]) send(req Req) {
	c.t.Helper()
	if err := c.stream.Send(req); err != nil {
		c.t.Fatal(err)
	}
}

func (c *adsStream[Req, Resp]) next(within time.Duration) Resp {
	c.t.Helper()
	select {
	case r, ok := <-c.resps:
		if !ok {
			c.t.Fatal("stream closed")
		}
		return r
	case <-time.After(within):
		c.t.Fatalf("no response within %v", within)
	}
	var none Resp
	return none
}

// count drains responses arriving within d.
func (c *adsStream[Req, Resp]) count(d time.Duration) int {
	n := 0
	deadline := time.After(d)
	for {
		select {
		case _, ok := <-c.resps:
			if !ok {
				return n
			}
			n++
		case <-deadline:
			return n
		}
	}
}

// TestNACKNotResentInALoop: a client that rejects everything gets the
// rejected version once, nothing more until the content changes, and the
// NACKs are counted.
func TestNACKNotResentInALoop(t *testing.T) {
	for _, typ := range []string{resource.ListenerType, resource.EndpointType} {
		t.Run(shortType(typ), func(t *testing.T) {
			s := start(t)
			put := func(port uint32) {
				if typ == resource.EndpointType {
					if err := s.UpdateEndpoints(map[string]types.Resource{"x": cla("x", port)}); err != nil {
						t.Fatal(err)
					}
					return
				}
				l := &listenerv3.Listener{Name: "x", Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: "0.0.0.0", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}}
				if err := s.SetView(context.Background(), GRPCView, map[resource.Type][]types.Resource{resource.ListenerType: {l}}); err != nil {
					t.Fatal(err)
				}
			}
			put(1)
			c := dialSotW(t, s.addr)
			n := node("n1", "grpc", "a")
			c.send(&discoveryv3.DiscoveryRequest{Node: n, TypeUrl: typ, ResourceNames: []string{"x"}})
			first := c.next(5 * time.Second)
			nacks := 0
			// Reject every response for a second, counting them.
			deadline := time.Now().Add(time.Second)
			resp := first
			sent := 1
			for time.Now().Before(deadline) {
				c.send(&discoveryv3.DiscoveryRequest{TypeUrl: typ, ResourceNames: []string{"x"}, ResponseNonce: resp.Nonce, ErrorDetail: &status.Status{Code: 3, Message: "rejected for the test"}})
				nacks++
				select {
				case r := <-c.resps:
					sent++
					resp = r
				case <-time.After(time.Until(deadline)):
				}
			}
			if sent != 1 {
				t.Fatalf("the rejected version was sent %d times in a second: want once", sent)
			}
			if got := testutil.ToFloat64(s.metrics.nacks.WithLabelValues(shortType(typ))); got != float64(nacks) {
				t.Errorf("nacks counted %v, want %d", got, nacks)
			}
			// New content is sent, once.
			put(2)
			next := c.next(5 * time.Second)
			if next.VersionInfo == first.VersionInfo {
				t.Errorf("new content came with the rejected version %s", next.VersionInfo)
			}
			c.send(&discoveryv3.DiscoveryRequest{TypeUrl: typ, VersionInfo: next.VersionInfo, ResourceNames: []string{"x"}, ResponseNonce: next.Nonce})
			if n := c.count(300 * time.Millisecond); n != 0 {
				t.Errorf("%d more responses after the ACK", n)
			}
		})
	}
}

// TestOneEndpointChangeOneAssignment: with 10 subscribers to 1,000
// assignments each, one changed assignment sends exactly one response of
// one resource to each, over SotW and delta alike.
func TestOneEndpointChangeOneAssignment(t *testing.T) {
	s := start(t)
	const names = 1000
	all := map[string]types.Resource{}
	var list []string
	for i := 0; i < names; i++ {
		n := fmt.Sprintf("svc-%d", i)
		all[n] = cla(n, 80)
		list = append(list, n)
	}
	if err := s.UpdateEndpoints(all); err != nil {
		t.Fatal(err)
	}
	var sotw []*sotwClient
	for i := 0; i < 5; i++ {
		c := dialSotW(t, s.addr)
		c.send(&discoveryv3.DiscoveryRequest{Node: node(fmt.Sprint("s", i), "grpc", "a"), TypeUrl: resource.EndpointType, ResourceNames: list})
		r := c.next(10 * time.Second)
		if len(r.Resources) != names {
			t.Fatalf("initial response has %d assignments, want %d", len(r.Resources), names)
		}
		c.send(&discoveryv3.DiscoveryRequest{TypeUrl: resource.EndpointType, VersionInfo: r.VersionInfo, ResourceNames: list, ResponseNonce: r.Nonce})
		sotw = append(sotw, c)
	}
	var delta []*deltaClient
	for i := 0; i < 5; i++ {
		c := dialDelta(t, s.addr)
		c.send(&discoveryv3.DeltaDiscoveryRequest{Node: node(fmt.Sprint("d", i), "gateway", "a"), TypeUrl: resource.EndpointType, ResourceNamesSubscribe: list})
		r := c.next(10 * time.Second)
		if len(r.Resources) != names {
			t.Fatalf("initial delta response has %d assignments, want %d", len(r.Resources), names)
		}
		c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResponseNonce: r.Nonce})
		delta = append(delta, c)
	}
	before := testutil.ToFloat64(s.metrics.pushedResources.WithLabelValues("ClusterLoadAssignment"))
	if err := s.UpdateEndpoints(map[string]types.Resource{"svc-7": cla("svc-7", 81)}); err != nil {
		t.Fatal(err)
	}
	for i, c := range sotw {
		r := c.next(5 * time.Second)
		if len(r.Resources) != 1 {
			t.Errorf("SotW subscriber %d got %d assignments for one change, want 1", i, len(r.Resources))
		}
		c.send(&discoveryv3.DiscoveryRequest{TypeUrl: resource.EndpointType, VersionInfo: r.VersionInfo, ResourceNames: list, ResponseNonce: r.Nonce})
	}
	for i, c := range delta {
		r := c.next(5 * time.Second)
		if len(r.Resources) != 1 || r.Resources[0].Name != "svc-7" {
			t.Errorf("delta subscriber %d got %d assignments for one change, want svc-7 alone", i, len(r.Resources))
		}
		c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResponseNonce: r.Nonce})
	}
	for _, c := range sotw {
		if n := c.count(200 * time.Millisecond); n != 0 {
			t.Errorf("a SotW subscriber got %d extra responses", n)
		}
	}
	if got := testutil.ToFloat64(s.metrics.pushedResources.WithLabelValues("ClusterLoadAssignment")) - before; got != 10 {
		t.Errorf("one change pushed %v assignments in all, want 10 (one per subscriber)", got)
	}
}

func dialDelta(t *testing.T, addr string) *deltaClient {
	t.Helper()
	ads, ctx := adsClient(t, addr)
	st, err := ads.DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return &deltaClient{t: t, stream: st, resps: pump(st.Recv)}
}

func TestNodeOfAnotherClusterRefused(t *testing.T) {
	s := start(t)
	c := dialSotW(t, s.addr)
	c.send(&discoveryv3.DiscoveryRequest{Node: node("stray", "gateway", "b"), TypeUrl: resource.ListenerType})
	select {
	case _, ok := <-c.resps:
		if ok {
			t.Fatal("a node of cluster b was answered by cluster a's server")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the stream of a node of another cluster stayed open")
	}
	_, err := c.stream.Recv()
	if err == nil || !strings.Contains(err.Error(), `cluster "b"`) {
		t.Errorf("refusal error %v should name the node's cluster", err)
	}
	if got := testutil.ToFloat64(s.metrics.refused); got != 1 {
		t.Errorf("refused nodes counted %v, want 1", got)
	}
}

// TestGatewayViewOnlyForGatewayPods: the gateway view carries the
// gateway's key, so only a client at a gateway pod's address gets it;
// proxyless gRPC clients are not affected.
func TestGatewayViewOnlyForGatewayPods(t *testing.T) {
	loopback := netip.MustParseAddr("127.0.0.1")
	var allowed atomic.Pointer[netip.Addr]
	other := netip.MustParseAddr("10.0.0.9")
	allowed.Store(&other)
	s := startWith(t, Config{GatewayPeer: func(a netip.Addr) bool { return a == *allowed.Load() }})
	if err := s.SetView(context.Background(), GatewayView, map[resource.Type][]types.Resource{resource.ListenerType: {&listenerv3.Listener{Name: "egress_16000"}}}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetView(context.Background(), GRPCView, map[resource.Type][]types.Resource{resource.ListenerType: {&listenerv3.Listener{Name: "echo.demo.svc.clusterset.local"}}}); err != nil {
		t.Fatal(err)
	}

	impostor := dialSotW(t, s.addr)
	impostor.send(&discoveryv3.DiscoveryRequest{Node: node("impostor", "gateway", "a"), TypeUrl: resource.ListenerType})
	if _, ok := <-impostor.resps; ok {
		t.Fatal("a gateway node from a non-gateway address was answered")
	}
	if _, err := impostor.stream.Recv(); err == nil || !strings.Contains(err.Error(), "no pod of the gateway Service") {
		t.Errorf("refusal %v should say the address is no gateway pod", err)
	}
	delta := dialDelta(t, s.addr)
	delta.send(&discoveryv3.DeltaDiscoveryRequest{Node: node("impostor", "gateway", "a"), TypeUrl: resource.ListenerType})
	if _, ok := <-delta.resps; ok {
		t.Fatal("a delta gateway node from a non-gateway address was answered")
	}

	grpcClient := dialSotW(t, s.addr)
	grpcClient.send(&discoveryv3.DiscoveryRequest{Node: node("client", "grpc", "a"), TypeUrl: resource.ListenerType, ResourceNames: []string{"echo.demo.svc.clusterset.local"}})
	if r := grpcClient.next(5 * time.Second); len(r.GetResources()) != 1 {
		t.Errorf("gRPC client got %d listeners, want 1", len(r.GetResources()))
	}

	allowed.Store(&loopback)
	gw := dialSotW(t, s.addr)
	gw.send(&discoveryv3.DiscoveryRequest{Node: node("gateway", "gateway", "a"), TypeUrl: resource.ListenerType})
	if r := gw.next(5 * time.Second); len(r.GetResources()) != 1 {
		t.Errorf("gateway pod got %d listeners, want 1", len(r.GetResources()))
	}
}

func TestViewOf(t *testing.T) {
	for _, tc := range []struct {
		node    *corev3.Node
		want    View
		wantErr bool
	}{
		{node("g", "gateway", "a"), GatewayView, false},
		{node("c", "grpc", "a"), GRPCView, false},
		{node("x", "sidecar", "a"), "", true},
		{node("y", "gateway", "b"), "", true},
		{&corev3.Node{Id: "envoy"}, GatewayView, false},
		{&corev3.Node{Id: "grpc", UserAgentName: "gRPC Go"}, GRPCView, false},
		{nil, "", true},
	} {
		v, err := ViewOf(tc.node, "a")
		if (err != nil) != tc.wantErr || v != tc.want {
			t.Errorf("ViewOf(%v) = %q, %v; want %q (error %v)", tc.node.GetId(), v, err, tc.want, tc.wantErr)
		}
	}
}
