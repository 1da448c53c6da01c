package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
)

// The keepalive policy: every client holds one long ADS stream, and a
// client that vanished without closing it (a node gone, a partition) would
// hold its watches forever. Pings find it within Time+Timeout. Clients may
// ping as often as every 10 s, with or without a stream, since proxyless
// gRPC clients keep the connection while idle.
var (
	keepaliveParams = keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}
	keepalivePolicy = keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}
)

// Serve serves ADS in plaintext on lis until ctx ends (then it returns
// nil, having closed lis and every stream) or serving fails. Outside
// tests, only on loopback: see ServeTLS.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	return s.ServeTLS(ctx, lis, nil)
}

// ServeTLS is Serve over TLS with cfg (nil: plaintext). The server asks
// for no client certificate: clients authenticate with a token (see
// Authenticator), which TLS keeps from the network, along with the
// gateway's key sent over SDS.
func (s *Server) ServeTLS(ctx context.Context, lis net.Listener, cfg *tls.Config) error {
	opts := []grpc.ServerOption{grpc.KeepaliveParams(keepaliveParams), grpc.KeepaliveEnforcementPolicy(keepalivePolicy)}
	if cfg != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(cfg)))
	}
	g := grpc.NewServer(opts...)
	s.Register(g)
	stopped := make(chan struct{})
	defer close(stopped)
	go func() {
		select {
		case <-ctx.Done():
			g.Stop()
		case <-stopped:
		}
	}()
	s.log.Info("serving xDS", "addr", lis.Addr().String(), "cluster", s.local, "tls", cfg != nil)
	if err := g.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serving xDS on %s: %w", lis.Addr(), err)
	}
	return nil
}
