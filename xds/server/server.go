package server

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
)

// Server is the xDS server: the caches and the ADS service over them.
type Server struct {
	log         *slog.Logger
	local       string
	gatewayPeer func(netip.Addr) bool
	auth        Authenticator
	gatewaySA   string
	anonGRPC    bool

	views *viewCache
	eds   *edsCache
	ads   serverv3.Server

	// requests maps a request to its stream for the endpoint cache, from
	// the request callback to the cache's CreateWatch.
	requests sync.Map

	metrics    *metrics
	streams    *streamTable
	maxStreams int
	maxNames   int

	mu      sync.Mutex
	changed map[string]time.Time // type URL → when its content last changed, for push latency
}

// Config is what New needs.
type Config struct {
	// ClusterID is the cluster this server serves; nodes of another are
	// refused.
	ClusterID string
	Log       *slog.Logger
	// Registry receives the isthmus_xds_* metrics.
	Registry prometheus.Registerer
	// GatewayPeer says whether a client at an address may take the
	// gateway view, which carries the gateway's private key over SDS: the
	// addresses of the gateway Service's pods. Nil admits any client (for
	// tests, or an operator who opts out with --gateway-service "").
	GatewayPeer func(netip.Addr) bool
	// Authenticator, when set, checks the ServiceAccount token each
	// stream sends in its authorization header (see Authenticator). Nil
	// checks none: every client is anonymous (tests, or a server serving
	// only loopback).
	Authenticator Authenticator
	// GatewayServiceAccount ("namespace/name") is the only ServiceAccount
	// whose token admits a stream to the gateway view, with GatewayPeer
	// as the second factor. Needed when Authenticator is set.
	GatewayServiceAccount string
	// AnonymousGRPC serves the gRPC view (topology, never keys) to
	// streams without a token. A token that is sent is checked all the
	// same. Without it, a gRPC client needs a valid token of any
	// ServiceAccount.
	AnonymousGRPC bool
	// MaxStreams caps the streams open at once, SotW and delta together
	// (0: DefaultMaxStreams); a stream over it is refused with
	// ResourceExhausted.
	MaxStreams int
	// MaxNamesPerRequest caps the resource names one request may name
	// (0: DefaultMaxNamesPerRequest); a request over it closes its stream
	// with ResourceExhausted.
	MaxNamesPerRequest int
}

// Defaults of the caps in Config. Every proxyless gRPC pod of the cluster
// and each gateway replica holds one stream; a gateway subscribes to one
// assignment per imported service port.
const (
	DefaultMaxStreams         = 10000
	DefaultMaxNamesPerRequest = 100000
)

// New builds a server with empty views. Nodes that connect before the
// first SetView wait for it.
func New(ctx context.Context, cfg Config) (*Server, error) {
	s := &Server{
		log:         cfg.Log,
		local:       cfg.ClusterID,
		gatewayPeer: cfg.GatewayPeer,
		auth:        cfg.Authenticator,
		gatewaySA:   cfg.GatewayServiceAccount,
		anonGRPC:    cfg.AnonymousGRPC,
		views:       newViewCache(nodeHash{localCluster: cfg.ClusterID}),
		streams:     newStreamTable(),
		changed:     map[string]time.Time{},
		maxStreams:  cfg.MaxStreams,
		maxNames:    cfg.MaxNamesPerRequest,
	}
	if s.auth != nil && s.gatewaySA == "" {
		return nil, fmt.Errorf("an xDS server that authenticates clients needs the gateway's ServiceAccount")
	}
	if s.maxStreams <= 0 {
		s.maxStreams = DefaultMaxStreams
	}
	if s.maxNames <= 0 {
		s.maxNames = DefaultMaxNamesPerRequest
	}
	m, err := newMetrics(cfg.Registry)
	if err != nil {
		return nil, fmt.Errorf("registering the xDS metrics: %w", err)
	}
	s.metrics = m
	s.eds = newEDSCache(cachev3.NewLinearCache(resource.EndpointType, cachev3.WithLogger(logAdapter{cfg.Log})), s.streamOf)
	mux := &cachev3.MuxCache{
		Classify: func(r *cachev3.Request) string { return classify(r.GetTypeUrl()) },
		ClassifyDelta: func(r *cachev3.DeltaRequest) string {
			return classify(r.GetTypeUrl())
		},
		Caches: map[string]cachev3.Cache{"eds": s.eds, "views": s.views.cache},
	}
	s.ads = serverv3.NewServer(ctx, mux, s.callbacks())
	return s, nil
}

func classify(typeURL string) string {
	if typeURL == resource.EndpointType {
		return "eds"
	}
	return "views"
}

// Register adds the aggregated discovery service (SotW and delta) to g.
// Envoy gets its SDS secrets over the same stream.
func (s *Server) Register(g *grpc.Server) {
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, s.ads)
}

// SetView replaces view's listeners, routes, clusters and secrets. The
// snapshot's version rises only when the content differs, so an
// unchanged view pushes nothing.
func (s *Server) SetView(ctx context.Context, v View, res map[resource.Type][]types.Resource) error {
	changedTypes, err := s.views.set(ctx, v, res)
	if err != nil {
		return fmt.Errorf("setting the %s view: %w", v, err)
	}
	now := time.Now()
	s.mu.Lock()
	for _, t := range changedTypes {
		s.changed[t] = now
	}
	s.mu.Unlock()
	for t, rs := range res {
		s.metrics.resources.WithLabelValues(string(v), shortType(t)).Set(float64(len(rs)))
	}
	return nil
}

// UpdateEndpoints changes the given ClusterLoadAssignments (nil deletes
// one). Only subscribers of a changed assignment receive anything.
func (s *Server) UpdateEndpoints(changed map[string]types.Resource) error {
	if len(changed) == 0 {
		return nil
	}
	s.mu.Lock()
	s.changed[resource.EndpointType] = time.Now()
	s.mu.Unlock()
	if err := s.eds.update(changed); err != nil {
		return fmt.Errorf("updating %d endpoint assignments: %w", len(changed), err)
	}
	s.metrics.resources.WithLabelValues("all", "ClusterLoadAssignment").Set(float64(s.eds.delta.NumResources()))
	return nil
}

// Endpoints returns the current assignments (for the debug dump).
func (s *Server) Endpoints() map[string]types.Resource { return s.eds.resources() }

// streamOf finds the SotW stream a request arrived on (noted by the
// request callback just before the cache sees the request).
func (s *Server) streamOf(req *cachev3.Request) (int64, bool) {
	id, ok := s.requests.LoadAndDelete(req)
	if !ok {
		return 0, false
	}
	return id.(int64), true
}

// ViewResources returns a view's current resources by type (for the
// debug dump).
func (s *Server) ViewResources(v View) map[resource.Type][]types.Resource {
	return s.views.resources(v)
}

// ConnectedNodes is the number of streams with a known node.
func (s *Server) ConnectedNodes() int { return s.streams.count() }

// typeLabel is the metric label of a type URL: its last word for the
// types the caches know, "other" for any other, so that made-up type URLs
// cannot grow the metrics without bound.
func typeLabel(typeURL string) string {
	if cachev3.GetResponseType(typeURL) == types.UnknownType {
		return "other"
	}
	return shortType(typeURL)
}

// shortType is a type URL's last word (Listener, Cluster, …).
func shortType(typeURL string) string {
	for i := len(typeURL) - 1; i >= 0; i-- {
		if typeURL[i] == '.' {
			return typeURL[i+1:]
		}
	}
	return typeURL
}

// streamTable is what the server knows of each open stream: its node and
// the version last sent per type, which NACK suppression needs.
//
// go-control-plane numbers SotW and delta streams each from 1, so the
// table is keyed by streamKey: a delta stream's id is negated, or a delta
// stream would share the node a SotW stream of the same number was
// admitted with.
type streamTable struct {
	mu      sync.Mutex
	streams map[int64]*streamState
}

// streamKey keys the stream table: SotW ids as they are, delta ids
// negated.
func streamKey(id int64, delta bool) int64 {
	if delta {
		return -id
	}
	return id
}

type streamState struct {
	peer     netip.Addr // the client's address, from the stream's context
	caller   string     // the authenticated ServiceAccount, "" if none
	authErr  error      // why the token sent was refused, nil if none was sent or it was good
	node     *corev3.Node
	view     View
	lastSent map[string]string   // type URL → version
	lastNACK map[string]string   // metric type label → version last reported as rejected
	types    map[string]struct{} // type URLs asked for, at most maxTypesPerStream
	lastReq  *discoveryv3.DiscoveryRequest
}

func newStreamTable() *streamTable { return &streamTable{streams: map[int64]*streamState{}} }

func (t *streamTable) get(id int64) *streamState {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.streams[id]
	if st == nil {
		st = newStreamState()
		t.streams[id] = st
	}
	return st
}

func newStreamState() *streamState {
	return &streamState{lastSent: map[string]string{}, lastNACK: map[string]string{}, types: map[string]struct{}{}}
}

// open adds a stream unless max are open already.
func (t *streamTable) open(id int64, max int) (*streamState, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if st := t.streams[id]; st != nil {
		return st, true
	}
	if len(t.streams) >= max {
		return nil, false
	}
	st := newStreamState()
	t.streams[id] = st
	return st, true
}

func (t *streamTable) drop(id int64) *streamState {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.streams[id]
	delete(t.streams, id)
	return st
}

func (t *streamTable) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, st := range t.streams {
		if st.node != nil {
			n++
		}
	}
	return n
}

// version formats a snapshot version.
func version(n uint64) string { return strconv.FormatUint(n, 10) }
