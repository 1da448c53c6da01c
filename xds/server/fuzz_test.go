package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/types/known/anypb"
)

// The fuzzed client's circumstances, chosen by the input's first bytes.
var (
	fuzzGatewayPod = netip.MustParseAddr("10.0.0.1")
	fuzzOtherPod   = netip.MustParseAddr("10.0.0.2")
	fuzzTokens     = []string{"", "gateway-token", "client-token", "bad-token", "review-down"}
	fuzzNodes      = []*corev3.Node{
		nil,
		node("client", "grpc", "a"),
		node("gw", "gateway", "a"),
		node("gw", "gateway", "b"),
		node("other", "grpc", "a"),
		{Id: "envoy", UserAgentName: "envoy"},
		{Id: "grpc-go", UserAgentName: "gRPC Go"},
		node("x", "sidecar", "a"),
	}
	fuzzTypes = []string{resource.ListenerType, resource.SecretType, resource.ClusterType, resource.EndpointType,
		resource.RouteType, "type.googleapis.com/made.up.Type", ""}
	fuzzNames = [][]string{nil, {"default"}, {"default", "ROOTCA"}, {"echo.demo.svc.clusterset.local"}, {"*"}, {"outbound|80||echo"}}
)

// fuzzAuth is an Authenticator with fixed answers.
type fuzzAuth struct{}

func (fuzzAuth) Authenticate(_ context.Context, token string) (string, error) {
	switch token {
	case "gateway-token":
		return "isthmus-system/isthmus-gateway", nil
	case "client-token":
		return "shop/client", nil
	case "review-down":
		return "", temporaryErr{}
	}
	return "", errors.New("not authenticated")
}

type temporaryErr struct{}

func (temporaryErr) Error() string   { return "review failed" }
func (temporaryErr) Temporary() bool { return true }

// FuzzRequestSequences feeds a sequence of discovery requests, state of
// the world or delta, from a client at a chosen address with a chosen
// token, into the real server (its callbacks, caches and go-control-plane's
// stream loop; only the gRPC transport is replaced by an in-memory
// stream), and checks the invariants: the gateway's key goes only to a
// stream whose first node is a gateway of this cluster, from a gateway pod,
// with the gateway's token; nothing panics; the stream leaves no state
// behind; metric labels stay within the known types and "other".
func FuzzRequestSequences(f *testing.F) {
	f.Add([]byte{0, 0, 1, 2, 1, 0, 0})          // the gateway, properly: served its key
	f.Add([]byte{0, 0, 2, 2, 1, 0, 0})          // another ServiceAccount as the gateway
	f.Add([]byte{0, 1, 1, 2, 1, 0, 0})          // the gateway's token from another pod
	f.Add([]byte{0, 1, 2, 1, 0, 3, 0, 2, 1})    // C1: admitted as gRPC, then the gateway's node
	f.Add([]byte{1, 1, 2, 1, 0, 3, 0, 2, 1})    // C1 over delta
	f.Add([]byte{0, 0, 0, 2, 1, 0, 0, 2, 1, 3}) // no token
	f.Add([]byte{0, 0, 4, 1, 0, 3, 0})          // the review is down
	f.Add([]byte{0, 0, 2, 1, 5, 4, 7, 5, 5, 5, 6, 5, 0})
	f.Add([]byte{1, 0, 1, 2, 1, 0, 2, 0, 1, 0, 3, 3, 0, 1, 2})
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < 3 || len(in) > 64 {
			return
		}
		s, sent, mayHaveKey, describe := runSequence(t, in)
		if carriesKey(t, sent) && !mayHaveKey {
			t.Fatalf("the gateway's key was sent to %s", describe)
		}
		if n := streamsLeft(s.Server); n != 0 {
			t.Fatalf("%d streams left in the table after the stream ended", n)
		}
		checkTypeLabels(t, s.reg)
	})
}

// TestFuzzHarnessReachesTheKey: the harness of FuzzRequestSequences does
// deliver the gateway's key to the gateway (first seed), over SotW and
// delta, so the fuzz target's check is one that can fail. It gives the
// server time to answer, which the fuzzer, for speed, does not.
func TestFuzzHarnessReachesTheKey(t *testing.T) {
	for _, in := range [][]byte{{0, 0, 1, 2, 1, 0, 0}, {1, 0, 1, 2, 1, 1, 0}} {
		_, sent, mayHaveKey, describe := runSequenceWaiting(t, in, 10*time.Second)
		if !mayHaveKey || !carriesKey(t, sent) {
			t.Errorf("%s: key allowed %v, sent %v", describe, mayHaveKey, carriesKey(t, sent))
		}
	}
}

// runSequence decodes in (protocol, address, token, then requests) and
// runs it against a fresh server, returning what was sent, whether the
// key may be among it, and a description.
func runSequence(t *testing.T, in []byte) (*testServer, []*anypb.Any, bool, string) {
	return runSequenceWaiting(t, in, 5*time.Millisecond)
}

// runSequenceWaiting is runSequence giving the server up to wait to answer
// each request before the next (or the stream's end) comes.
func runSequenceWaiting(t *testing.T, in []byte, wait time.Duration) (*testServer, []*anypb.Any, bool, string) {
	t.Helper()
	delta := in[0]%2 == 1
	addr := fuzzGatewayPod
	if in[1]%2 == 1 {
		addr = fuzzOtherPod
	}
	token := fuzzTokens[int(in[2])%len(fuzzTokens)]
	ops := in[3:]

	s := startWithSecrets(t, Config{Authenticator: fuzzAuth{}, GatewayServiceAccount: "isthmus-system/isthmus-gateway"})
	s.gatewayPeer = func(a netip.Addr) bool { return a == fuzzGatewayPod }
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ctx = peer.NewContext(ctx, &peer.Peer{Addr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(addr, 40000))})
	if token != "" {
		ctx = metadata.NewIncomingContext(ctx, metadata.Pairs("authorization", "Bearer "+token))
	}
	var first *corev3.Node
	var sent []*anypb.Any
	if delta {
		reqs := deltaRequests(ops)
		if len(reqs) > 0 {
			first = reqs[0].GetNode()
		}
		st := newMemStream[*discoveryv3.DeltaDiscoveryRequest, *discoveryv3.DeltaDiscoveryResponse](ctx, reqs, wait)
		_ = s.ads.DeltaAggregatedResources(st)
		for _, r := range st.responses() {
			sent = append(sent, deltaResources(r)...)
		}
	} else {
		reqs := sotwRequests(ops)
		if len(reqs) > 0 {
			first = reqs[0].GetNode()
		}
		st := newMemStream[*discoveryv3.DiscoveryRequest, *discoveryv3.DiscoveryResponse](ctx, reqs, wait)
		_ = s.ads.StreamAggregatedResources(st)
		for _, r := range st.responses() {
			sent = append(sent, r.GetResources()...)
		}
	}
	v, err := ViewOf(first, "a")
	mayHaveKey := err == nil && v == GatewayView && addr == fuzzGatewayPod && token == "gateway-token"
	return s, sent, mayHaveKey, fmt.Sprintf("a %s stream (first node %v, from %v, token %q)", map[bool]string{true: "delta", false: "sotw"}[delta], first, addr, token)
}

// sotwRequests decodes ops, four bytes a request: node, type, names, and
// a byte of flags (nonce, version, NACK).
func sotwRequests(ops []byte) []*discoveryv3.DiscoveryRequest {
	var out []*discoveryv3.DiscoveryRequest
	for i := 0; i+3 < len(ops); i += 4 {
		r := &discoveryv3.DiscoveryRequest{
			Node:          fuzzNodes[int(ops[i])%len(fuzzNodes)],
			TypeUrl:       fuzzTypes[int(ops[i+1])%len(fuzzTypes)],
			ResourceNames: fuzzNames[int(ops[i+2])%len(fuzzNames)],
		}
		flags := ops[i+3]
		if flags&1 != 0 {
			r.ResponseNonce = strconv.Itoa(int(flags >> 4))
		}
		if flags&2 != 0 {
			r.VersionInfo = strconv.Itoa(int(flags >> 4))
		}
		if flags&4 != 0 {
			r.ErrorDetail = &status.Status{Message: "rejected"}
		}
		out = append(out, r)
	}
	return out
}

// deltaRequests decodes ops as sotwRequests does, for delta streams.
func deltaRequests(ops []byte) []*discoveryv3.DeltaDiscoveryRequest {
	var out []*discoveryv3.DeltaDiscoveryRequest
	for _, r := range sotwRequests(ops) {
		d := &discoveryv3.DeltaDiscoveryRequest{Node: r.Node, TypeUrl: r.TypeUrl, ResourceNamesSubscribe: r.ResourceNames,
			ResponseNonce: r.ResponseNonce, ErrorDetail: r.ErrorDetail}
		if r.VersionInfo != "" {
			d.ResourceNamesUnsubscribe = r.ResourceNames
			d.ResourceNamesSubscribe = nil
		}
		out = append(out, d)
	}
	return out
}

func streamsLeft(s *Server) int {
	s.streams.mu.Lock()
	defer s.streams.mu.Unlock()
	n := len(s.streams.streams)
	s.requests.Range(func(any, any) bool { n++; return true })
	return n
}

// checkTypeLabels: every type label of the metrics is a type the caches
// know, or "other".
func checkTypeLabels(t *testing.T, reg *prometheus.Registry) {
	t.Helper()
	known := map[string]bool{"other": true}
	for _, u := range fuzzTypes {
		if u != "" && u != "type.googleapis.com/made.up.Type" {
			known[shortType(u)] = true
		}
	}
	known["ScopedRouteConfiguration"], known["VirtualHost"], known["Runtime"], known["TypedExtensionConfig"] = true, true, true, true
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "type" && !known[l.GetValue()] {
					t.Fatalf("%s has type label %q", mf.GetName(), l.GetValue())
				}
			}
		}
	}
}

// memStream is an ADS stream in memory: Recv hands out reqs one by one,
// each after the response to the one before (or wait), then EOF.
type memStream[Req, Resp any] struct {
	grpc.ServerStream
	ctx   context.Context
	wait  time.Duration
	reqs  []Req
	next  int
	mu    sync.Mutex
	sent  []Resp
	reply chan struct{}
}

func newMemStream[Req, Resp any](ctx context.Context, reqs []Req, wait time.Duration) *memStream[Req, Resp] {
	return &memStream[Req, Resp]{ctx: ctx, reqs: reqs, wait: wait, reply: make(chan struct{}, 1)}
}

func (m *memStream[Req, Resp]) Context() context.Context { return m.ctx }

func (m *memStream[Req, Resp]) Recv() (Req, error) {
	if m.next > 0 {
		select {
		case <-m.reply:
		case <-time.After(m.wait):
		}
	}
	if m.next >= len(m.reqs) {
		var zero Req
		return zero, io.EOF
	}
	r := m.reqs[m.next]
	m.next++
	return r, nil
}

func (m *memStream[Req, Resp]) Send(r Resp) error {
	m.mu.Lock()
	m.sent = append(m.sent, r)
	m.mu.Unlock()
	select {
	case m.reply <- struct{}{}:
	default:
	}
	return nil
}

func (m *memStream[Req, Resp]) responses() []Resp {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Resp(nil), m.sent...)
}
