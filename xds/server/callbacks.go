package server

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"time"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	grpcstatus "google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Limits on what one stream may make the server hold or log.
const (
	// maxTypesPerStream bounds the type URLs one stream may ask for: each
	// opens a watch, and the caches know 10 types.
	maxTypesPerStream = 16
	// maxLogged bounds each client-given string (node id, user agent,
	// metadata, type URL, NACK message) in a log line or refusal.
	maxLogged = 256
)

// callbacks hook the server's stream events: node admission, caps, NACK
// suppression, metrics. Delta stream ids are negated (see streamKey).
func (s *Server) callbacks() serverv3.Callbacks {
	return serverv3.CallbackFuncs{
		StreamOpenFunc: func(ctx context.Context, id int64, _ string) error {
			return s.opened(ctx, streamKey(id, false))
		},
		DeltaStreamOpenFunc: func(ctx context.Context, id int64, _ string) error {
			return s.opened(ctx, streamKey(id, true))
		},
		StreamClosedFunc:      func(id int64, _ *corev3.Node) { s.closed(streamKey(id, false)) },
		DeltaStreamClosedFunc: func(id int64, _ *corev3.Node) { s.closed(streamKey(id, true)) },
		StreamRequestFunc: func(id int64, req *discoveryv3.DiscoveryRequest) error {
			n, err := s.admit(id, req.GetNode(), req.GetTypeUrl(), len(req.GetResourceNames()))
			if err != nil {
				return err
			}
			// The caches key the view by the request's node: it must be
			// the one the stream was admitted with.
			req.Node = n
			s.suppressNACK(id, req)
			st := s.streams.get(id)
			s.streams.mu.Lock()
			prev := st.lastReq
			st.lastReq = req
			s.streams.mu.Unlock()
			if prev != nil {
				s.requests.Delete(prev) // a request the server skipped (stale nonce)
			}
			s.requests.Store(req, id)
			return nil
		},
		StreamResponseFunc: func(_ context.Context, id int64, req *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
			st := s.streams.get(id)
			s.streams.mu.Lock()
			st.lastSent[resp.GetTypeUrl()] = resp.GetVersionInfo()
			s.streams.mu.Unlock()
			s.pushed(resp.GetTypeUrl(), len(resp.GetResources()))
		},
		StreamDeltaRequestFunc: func(id int64, req *discoveryv3.DeltaDiscoveryRequest) error {
			key := streamKey(id, true)
			names := len(req.GetResourceNamesSubscribe()) + len(req.GetResourceNamesUnsubscribe()) + len(req.GetInitialResourceVersions())
			n, err := s.admit(key, req.GetNode(), req.GetTypeUrl(), names)
			if err != nil {
				return err
			}
			req.Node = n
			if req.GetErrorDetail() != nil {
				// The delta server records what it sent when it sends, so a
				// NACK does not make it re-send; it is counted and logged.
				s.nacked(key, req.GetTypeUrl(), req.GetResponseNonce(), req.GetErrorDetail().GetMessage())
			}
			return nil
		},
		StreamDeltaResponseFunc: func(_ int64, _ *discoveryv3.DeltaDiscoveryRequest, resp *discoveryv3.DeltaDiscoveryResponse) {
			s.pushed(resp.GetTypeUrl(), len(resp.GetResources())+len(resp.GetRemovedResources()))
		},
	}
}

// admit checks a request against its stream and returns the node the
// caches must see. The first request's node decides the stream's view
// once: a later request may omit the node or repeat it, but one that
// names another node or role is refused and its stream closed, since the
// caches would otherwise serve it that node's view (the gateway view
// carries the gateway's private key). It also enforces the caps on names
// per request and types per stream.
func (s *Server) admit(key int64, node *corev3.Node, typeURL string, names int) (*corev3.Node, error) {
	st := s.streams.get(key)
	s.streams.mu.Lock()
	admitted, view := st.node, st.view
	_, seen := st.types[typeURL]
	if !seen && len(st.types) < maxTypesPerStream {
		st.types[typeURL] = struct{}{}
		seen = true
	}
	s.streams.mu.Unlock()
	if names > s.maxNames {
		return nil, s.limit(admitted, "names", fmt.Sprintf("a request names %d resources; at most %d are served per request", names, s.maxNames))
	}
	if !seen {
		return nil, s.limit(admitted, "types", fmt.Sprintf("the stream asks for more than %d resource types", maxTypesPerStream))
	}
	if admitted != nil {
		if node != nil && !sameNode(node, admitted) {
			s.metrics.refused.Inc()
			s.log.Warn("refusing an xDS request whose node differs from its stream's", "node", clip(admitted.GetId()), "view", view,
				"new_node", clip(node.GetId()), "new_role", clip(metadataString(node, MetadataRole)), "type", typeLabel(typeURL))
			return nil, grpcstatus.Errorf(codes.PermissionDenied, "node %q asks as %q on a stream opened by node %q: a stream's node is fixed by its first request",
				clip(node.GetId()), clip(metadataString(node, MetadataRole)), clip(admitted.GetId()))
		}
		return admitted, nil
	}
	// go-control-plane hands a first request without a node to us with an
	// empty one, which ViewOf would take for a gateway (FuzzRequestSequences
	// found it).
	if node == nil || proto.Size(node) == 0 {
		return nil, grpcstatus.Error(codes.InvalidArgument, "the first request on a stream must carry the node")
	}
	v, err := ViewOf(node, s.local)
	if err == nil && v == GatewayView && s.gatewayPeer != nil {
		s.streams.mu.Lock()
		addr := st.peer
		s.streams.mu.Unlock()
		if !s.gatewayPeer(addr) {
			err = fmt.Errorf("node %q asks for the gateway view (which carries the gateway's key) from %v, which is no pod of the gateway Service", clip(node.GetId()), addr)
		}
	}
	if err != nil {
		s.metrics.refused.Inc()
		s.log.Warn("refusing an xDS client", "node", clip(node.GetId()), "err", err)
		return nil, grpcstatus.Error(codes.PermissionDenied, err.Error())
	}
	if err := s.authorize(st, v); err != nil {
		s.log.Warn("refusing an xDS client for its credentials", "node", clip(node.GetId()), "view", v, "err", grpcstatus.Convert(err).Message())
		return nil, err
	}
	s.streams.mu.Lock()
	st.node, st.view = node, v
	s.streams.mu.Unlock()
	s.metrics.connected.WithLabelValues(string(v)).Inc()
	s.streams.mu.Lock()
	caller := st.caller
	s.streams.mu.Unlock()
	s.log.Info("xDS client connected", "node", clip(node.GetId()), "view", v, "user_agent", clip(node.GetUserAgentName()), "service_account", caller)
	return node, nil
}

// limit counts and logs a stream closed for going over a cap.
func (s *Server) limit(node *corev3.Node, cap, why string) error {
	s.metrics.limited.WithLabelValues(cap).Inc()
	s.log.Warn("closing an xDS stream over a cap", "node", clip(node.GetId()), "limit", cap, "err", why)
	return grpcstatus.Error(codes.ResourceExhausted, why)
}

// sameNode says whether a later request's node is the stream's: the same
// id and everything ViewOf decides by.
func sameNode(a, b *corev3.Node) bool {
	if a.GetId() != b.GetId() || a.GetCluster() != b.GetCluster() || a.GetUserAgentName() != b.GetUserAgentName() {
		return false
	}
	af, bf := a.GetMetadata().GetFields(), b.GetMetadata().GetFields()
	for _, k := range []string{MetadataRole, MetadataCluster} {
		if !proto.Equal(af[k], bf[k]) {
			return false
		}
	}
	return true
}

func metadataString(n *corev3.Node, key string) string {
	return n.GetMetadata().GetFields()[key].GetStringValue()
}

// clip bounds a client-given string for a log line or an error.
func clip(s string) string { return clipTo(s, maxLogged) }

func clipTo(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := n
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + "…(" + strconv.Itoa(len(s)) + " bytes)"
}

// opened notes the client's address, which admit checks for the gateway
// view, and who its token says it is, and refuses a stream over the cap.
func (s *Server) opened(ctx context.Context, key int64) error {
	st, ok := s.streams.open(key, s.maxStreams)
	if !ok {
		return s.limit(nil, "streams", fmt.Sprintf("%d xDS streams are open, the most this server serves", s.maxStreams))
	}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		if ap, err := netip.ParseAddrPort(p.Addr.String()); err == nil {
			s.streams.mu.Lock()
			st.peer = ap.Addr().Unmap()
			s.streams.mu.Unlock()
		}
	}
	s.authenticate(ctx, st)
	return nil
}

func (s *Server) closed(key int64) {
	if key > 0 {
		s.eds.forget(key) // only SotW streams are in the endpoint cache's own table
	}
	st := s.streams.drop(key)
	if st != nil && st.lastReq != nil {
		s.requests.Delete(st.lastReq)
	}
	if st == nil || st.node == nil {
		return
	}
	s.metrics.connected.WithLabelValues(string(st.view)).Dec()
	s.log.Info("xDS client disconnected", "node", clip(st.node.GetId()), "view", st.view)
}

// suppressNACK keeps go-control-plane from re-sending a rejected version
// in a loop (envoyproxy/go-control-plane#962: measured at ~24,000 round
// trips a second). A NACK carries the last version the client accepted;
// the cache, seeing it differ from its own, would answer at once with the
// same rejected content. Rewriting the request's version to the one just
// rejected makes the cache wait until the content changes.
func (s *Server) suppressNACK(id int64, req *discoveryv3.DiscoveryRequest) {
	if req.GetErrorDetail() == nil {
		return
	}
	st := s.streams.get(id)
	s.streams.mu.Lock()
	sent := st.lastSent[req.GetTypeUrl()]
	s.streams.mu.Unlock()
	s.nacked(id, req.GetTypeUrl(), sent, req.GetErrorDetail().GetMessage())
	if sent != "" {
		req.VersionInfo = sent
	}
}

// nacked counts a rejection and logs it once per stream, type and version,
// so a client that keeps rejecting cannot flood the log.
func (s *Server) nacked(id int64, typeURL, version, msg string) {
	t := typeLabel(typeURL)
	s.metrics.nacks.WithLabelValues(t).Inc()
	st := s.streams.get(id)
	s.streams.mu.Lock()
	last, ok := st.lastNACK[t]
	repeat := ok && last == version
	st.lastNACK[t] = version
	node := st.node
	s.streams.mu.Unlock()
	if repeat {
		return
	}
	s.log.Warn("xDS client rejected resources", "node", clip(node.GetId()), "type", t, "version", clip(version), "error", clip(msg))
}

// pushed counts a response and observes how long after the last change
// of its type it went out.
func (s *Server) pushed(typeURL string, resources int) {
	t := typeLabel(typeURL)
	s.metrics.pushes.WithLabelValues(t).Inc()
	s.metrics.pushedResources.WithLabelValues(t).Add(float64(resources))
	s.mu.Lock()
	at, ok := s.changed[typeURL]
	s.mu.Unlock()
	if ok {
		s.metrics.pushLatency.WithLabelValues(t).Observe(time.Since(at).Seconds())
	}
}

// logAdapter gives go-control-plane's logger interface our slog logger;
// its chatter goes to debug.
type logAdapter struct{ l *slog.Logger }

// Formatting happens only when debug is on: go-control-plane's debug
// lines print whole subscriptions (10,000 names), which cost 40 % of the
// server's CPU per change when formatted for nothing.
func (a logAdapter) Debugf(f string, args ...any) {
	if a.l.Enabled(context.Background(), slog.LevelDebug) {
		a.l.Debug(fmt.Sprintf(f, args...))
	}
}
func (a logAdapter) Infof(f string, args ...any) { a.Debugf(f, args...) }

// go-control-plane's warnings and errors quote type URLs and whole
// subscriptions a client chose, so they are clipped like the client's
// own strings (longer, as they carry more context).
func (a logAdapter) Warnf(f string, args ...any) {
	a.l.Warn(clipTo(fmt.Sprintf(f, args...), 4*maxLogged))
}
func (a logAdapter) Errorf(f string, args ...any) {
	a.l.Error(clipTo(fmt.Sprintf(f, args...), 4*maxLogged))
}
