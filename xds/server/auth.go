package server

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	grpcstatus "google.golang.org/grpc/status"
)

// Authenticator says whose a bearer token is: the ServiceAccount
// ("namespace/name") of a projected token bound to the xDS audience, or
// why it is refused (xds/auth checks it with TokenReview). Errors must not
// quote the token; one with a Temporary() method reporting true (the
// review itself failed) refuses with Unavailable, so the client retries.
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (serviceAccount string, err error)
}

// reviewTimeout bounds the token check a stream waits for when it opens.
const reviewTimeout = 10 * time.Second

// Reasons a stream is refused for its credentials: the label values of
// isthmus_xds_unauthenticated_streams_total.
const (
	authNoToken      = "no_token"
	authInvalid      = "invalid_token"
	authWrongAccount = "wrong_service_account"
	authReviewFailed = "review_failed"
)

// authenticate reads the stream's bearer token, if any, and asks the
// Authenticator whose it is. It records the caller or the refusal on the
// stream; admit decides once the first request names the view.
func (s *Server) authenticate(ctx context.Context, st *streamState) {
	if s.auth == nil {
		return
	}
	token, ok := bearer(ctx)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, reviewTimeout)
	defer cancel()
	sa, err := s.auth.Authenticate(ctx, token)
	s.streams.mu.Lock()
	st.caller, st.authErr = sa, err
	s.streams.mu.Unlock()
}

// bearer is the token of the stream's "authorization: Bearer <token>"
// header (Envoy's file_based_metadata call credentials and gRPC's
// jwt_token_file both send that).
func bearer(ctx context.Context) (string, bool) {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		scheme, token, ok := strings.Cut(v, " ")
		if ok && strings.EqualFold(scheme, "bearer") && strings.TrimSpace(token) != "" {
			return strings.TrimSpace(token), true
		}
	}
	return "", false
}

// authorize says whether the stream's caller may have view v. The
// gateway view (it carries the gateway's private key) needs the gateway's
// ServiceAccount; the gRPC view any authenticated ServiceAccount, or none
// with AnonymousGRPC. A token that was sent and refused refuses the
// stream whatever the view.
func (s *Server) authorize(st *streamState, v View) error {
	if s.auth == nil {
		return nil
	}
	s.streams.mu.Lock()
	caller, authErr := st.caller, st.authErr
	s.streams.mu.Unlock()
	need := "a projected ServiceAccount token with audience isthmus-xds in the authorization header"
	switch {
	case authErr != nil:
		reason := authInvalid
		code := codes.Unauthenticated
		var t interface{ Temporary() bool }
		if errors.As(authErr, &t) && t.Temporary() {
			reason, code = authReviewFailed, codes.Unavailable
		}
		return s.unauthenticated(reason, code, fmt.Sprintf("the %s view: the stream's token was refused: %v", v, authErr))
	case v == GatewayView && caller == "":
		return s.unauthenticated(authNoToken, codes.Unauthenticated, fmt.Sprintf("the gateway view needs the token of ServiceAccount %s (%s); the stream sent none", s.gatewaySA, need))
	case v == GatewayView && caller != s.gatewaySA:
		return s.unauthenticated(authWrongAccount, codes.PermissionDenied, fmt.Sprintf("the gateway view is only for ServiceAccount %s; the stream's token is %s's", s.gatewaySA, caller))
	case v == GRPCView && caller == "" && !s.anonGRPC:
		return s.unauthenticated(authNoToken, codes.Unauthenticated, fmt.Sprintf("the grpc view needs %s; the stream sent none", need))
	}
	return nil
}

func (s *Server) unauthenticated(reason string, code codes.Code, msg string) error {
	s.metrics.unauthenticated.WithLabelValues(reason).Inc()
	return grpcstatus.Error(code, msg)
}
