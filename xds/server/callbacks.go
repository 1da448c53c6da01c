package server

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc/peer"
)

// callbacks hook the server's stream events: node admission, NACK
// suppression, metrics.
func (s *Server) callbacks() serverv3.Callbacks {
	return serverv3.CallbackFuncs{
		StreamOpenFunc:        s.opened,
		DeltaStreamOpenFunc:   s.opened,
		StreamClosedFunc:      func(id int64, _ *corev3.Node) { s.closed(id) },
		DeltaStreamClosedFunc: func(id int64, _ *corev3.Node) { s.closed(id) },
		StreamRequestFunc: func(id int64, req *discoveryv3.DiscoveryRequest) error {
			if err := s.admit(id, req.GetNode()); err != nil {
				return err
			}
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
			if err := s.admit(id, req.GetNode()); err != nil {
				return err
			}
			if req.GetErrorDetail() != nil {
				// The delta server records what it sent when it sends, so a
				// NACK does not make it re-send; it is counted and logged.
				s.nacked(id, req.GetTypeUrl(), req.GetResponseNonce(), req.GetErrorDetail().GetMessage())
			}
			return nil
		},
		StreamDeltaResponseFunc: func(id int64, _ *discoveryv3.DeltaDiscoveryRequest, resp *discoveryv3.DeltaDiscoveryResponse) {
			s.pushed(resp.GetTypeUrl(), len(resp.GetResources())+len(resp.GetRemovedResources()))
		},
	}
}

// admit learns a stream's node from its first request and refuses nodes
// no view is for. Later requests may omit the node.
func (s *Server) admit(id int64, node *corev3.Node) error {
	st := s.streams.get(id)
	s.streams.mu.Lock()
	known := st.node != nil
	s.streams.mu.Unlock()
	if known || node == nil {
		if !known {
			return fmt.Errorf("the first request on a stream must carry the node")
		}
		return nil
	}
	v, err := ViewOf(node, s.local)
	if err == nil && v == GatewayView && s.gatewayPeer != nil {
		s.streams.mu.Lock()
		addr := st.peer
		s.streams.mu.Unlock()
		if !s.gatewayPeer(addr) {
			err = fmt.Errorf("node %q asks for the gateway view (which carries the gateway's key) from %v, which is no pod of the gateway Service", node.GetId(), addr)
		}
	}
	if err != nil {
		s.metrics.refused.Inc()
		s.log.Warn("refusing an xDS client", "node", node.GetId(), "err", err)
		return err
	}
	s.streams.mu.Lock()
	st.node, st.view = node, v
	s.streams.mu.Unlock()
	s.metrics.connected.WithLabelValues(string(v)).Inc()
	s.log.Info("xDS client connected", "node", node.GetId(), "view", v, "user_agent", node.GetUserAgentName())
	return nil
}

// opened notes the client's address, which admit checks for the gateway
// view.
func (s *Server) opened(ctx context.Context, id int64, _ string) error {
	st := s.streams.get(id)
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		if ap, err := netip.ParseAddrPort(p.Addr.String()); err == nil {
			s.streams.mu.Lock()
			st.peer = ap.Addr().Unmap()
			s.streams.mu.Unlock()
		}
	}
	return nil
}

func (s *Server) closed(id int64) {
	s.eds.forget(id)
	st := s.streams.drop(id)
	if st != nil && st.lastReq != nil {
		s.requests.Delete(st.lastReq)
	}
	if st == nil || st.node == nil {
		return
	}
	s.metrics.connected.WithLabelValues(string(st.view)).Dec()
	s.log.Info("xDS client disconnected", "node", st.node.GetId(), "view", st.view)
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
	s.metrics.nacks.WithLabelValues(shortType(typeURL)).Inc()
	st := s.streams.get(id)
	s.streams.mu.Lock()
	repeat := st.lastNACK[typeURL] == version
	st.lastNACK[typeURL] = version
	node := st.node
	s.streams.mu.Unlock()
	if repeat {
		return
	}
	s.log.Warn("xDS client rejected resources", "node", node.GetId(), "type", shortType(typeURL), "version", version, "error", msg)
}

// pushed counts a response and observes how long after the last change
// of its type it went out.
func (s *Server) pushed(typeURL string, resources int) {
	t := shortType(typeURL)
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
func (a logAdapter) Infof(f string, args ...any)  { a.Debugf(f, args...) }
func (a logAdapter) Warnf(f string, args ...any)  { a.l.Warn(fmt.Sprintf(f, args...)) }
func (a logAdapter) Errorf(f string, args ...any) { a.l.Error(fmt.Sprintf(f, args...)) }
