package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	authenticationv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/xds/auth"
)

// xdsConnFlags say how diagnose reaches the xDS server. The chart's
// serves ADS over TLS with a certificate from the cluster's intermediate
// and admits a stream by its ServiceAccount token (audience isthmus-xds,
// checked with TokenReview), so diagnose verifies the server against the
// clusterset's roots and sends a token minted for it, as a client would.
type xdsConnFlags struct {
	caFile, serverName, serviceAccount string
	plaintext                          bool
}

// defaultXDSServerName is the first DNS name in the serving certificate
// `isthmus xds` gets by default (--server-names): through a port-forward
// the address dialled is localhost, which the certificate does not name.
const defaultXDSServerName = "isthmus-xds." + brokerv1.MemberNamespace + ".svc"

// xdsTokenTTL is the lifetime of the token diagnose asks for: the least
// TokenRequest grants, and diagnose needs it for seconds.
const xdsTokenTTL = 10 * time.Minute

func (x *xdsConnFlags) register(f *pflag.FlagSet) {
	f.StringVar(&x.caFile, "xds-ca-file", "", "PEM file of the roots to verify the xDS server with (default: ca.crt of ConfigMap "+brokerv1.MemberNamespace+"/"+brokerv1.TrustBundleConfigMap+" in this cluster)")
	f.StringVar(&x.serverName, "xds-server-name", defaultXDSServerName, "name the xDS server's certificate must carry (a name of its --server-names)")
	f.StringVar(&x.serviceAccount, "xds-service-account", brokerv1.MemberNamespace+"/"+brokerv1.GatewayServiceAccount,
		"NAMESPACE/NAME of the ServiceAccount whose token (TokenRequest, audience "+auth.Audience+", 10 min) diagnose sends: any admits the gRPC view, only the gateway's the gateway view (empty: send none)")
	f.BoolVar(&x.plaintext, "xds-plaintext", false, "speak plaintext gRPC to --xds-server: an isthmus xds listening on loopback serves no TLS and checks no token")
}

// xdsDial connects to the xDS server, each step (roots, token, TLS
// handshake) checked on its own so that a failure names the step and what
// to do about it; it adds one finding, and returns nil when a step failed.
func (d *diagnosis) xdsDial(ctx context.Context) *grpc.ClientConn {
	if d.xdsConn.plaintext {
		cc, err := grpc.NewClient(d.xdsServer, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			d.add("xds", false, "--xds-server "+d.xdsServer+": "+err.Error(), "give host:port of `isthmus xds` (--listen, default :15010)")
			return nil
		}
		return cc
	}
	roots, from, err := d.xdsRoots(ctx)
	if err != nil {
		d.add("xds trust", false, err.Error(), d.rootsAdvice(err))
		return nil
	}
	cfg := &tls.Config{RootCAs: roots, ServerName: d.xdsConn.serverName, MinVersion: tls.VersionTLS12}
	var token string
	if sa := d.xdsConn.serviceAccount; sa != "" {
		if token, err = d.xdsToken(ctx, sa); err != nil {
			d.add("xds token", false, err.Error(), tokenAdvice(err, sa))
			return nil
		}
	}
	server, err := handshake(ctx, d.xdsServer, cfg)
	if err != nil { // always a *handshakeError
		d.add("xds tls", false, err.Error(), d.tlsAdvice(err))
		return nil
	}
	// A cluster's identities are in its own trust domain, <id>.<domain>.
	if server != nil && !strings.HasPrefix(server.Host, d.id+".") {
		d.add("xds tls", false, fmt.Sprintf("the server at %s is %s, not of cluster %s", d.xdsServer, server, d.id),
			"point --xds-server at "+d.id+"'s own xDS server (a port-forward in this cluster)")
		return nil
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(cfg))}
	who := "no token"
	if token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearerToken(token)))
		who = "a token of " + d.xdsConn.serviceAccount
	}
	cc, err := grpc.NewClient(d.xdsServer, opts...)
	if err != nil {
		d.add("xds", false, "--xds-server "+d.xdsServer+": "+err.Error(), "give host:port of `isthmus xds` (--listen, default :15010)")
		return nil
	}
	d.add("xds connection", true, fmt.Sprintf("TLS to %s as %s (%s), verified against %s; sending %s", d.xdsServer, d.xdsConn.serverName, server, from, who), "")
	return cc
}

// xdsRoots reads the roots to verify the server with and says where from.
func (d *diagnosis) xdsRoots(ctx context.Context) (*x509.CertPool, string, error) {
	var pemBytes []byte
	from := "--xds-ca-file " + d.xdsConn.caFile
	if d.xdsConn.caFile != "" {
		b, err := os.ReadFile(d.xdsConn.caFile)
		if err != nil {
			return nil, "", fmt.Errorf("reading --xds-ca-file: %w", err)
		}
		pemBytes = b
	} else {
		from = "ConfigMap " + brokerv1.MemberNamespace + "/" + brokerv1.TrustBundleConfigMap
		cm, err := d.local.Kube.CoreV1().ConfigMaps(brokerv1.MemberNamespace).Get(ctx, brokerv1.TrustBundleConfigMap, metav1.GetOptions{})
		if err != nil {
			return nil, "", fmt.Errorf("reading the clusterset's roots from %s: %w", from, err)
		}
		pemBytes = []byte(cm.Data[brokerv1.TrustBundleKey])
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pemBytes) {
		return nil, "", fmt.Errorf("%s holds no PEM certificate", from)
	}
	return roots, "the roots of " + from, nil
}

func (d *diagnosis) rootsAdvice(err error) string {
	switch {
	case apierrors.IsNotFound(err):
		return "isthmusctl join copies the clusterset's roots into this cluster: run it for this cluster, or pass --xds-ca-file"
	case apierrors.IsForbidden(err):
		return "you may not read ConfigMaps in " + brokerv1.MemberNamespace + ": pass the roots with --xds-ca-file"
	case d.xdsConn.caFile != "":
		return "--xds-ca-file must be a PEM file of the clusterset's root certificates (ca.crt of ConfigMap " + brokerv1.MemberNamespace + "/" + brokerv1.TrustBundleConfigMap + ")"
	}
	return "ConfigMap " + brokerv1.MemberNamespace + "/" + brokerv1.TrustBundleConfigMap + " lacks " + brokerv1.TrustBundleKey + ": run isthmusctl join for this cluster again"
}

// xdsToken asks TokenRequest for a short-lived token of sa bound to the
// xDS audience, as the kubelet projects one into a client's pod.
func (d *diagnosis) xdsToken(ctx context.Context, sa string) (string, error) {
	ns, name, ok := strings.Cut(sa, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return "", fmt.Errorf("--xds-service-account %q: want NAMESPACE/NAME", sa)
	}
	ttl := int64(xdsTokenTTL / time.Second)
	tr, err := d.local.Kube.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{auth.Audience}, ExpirationSeconds: &ttl},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("requesting a token of ServiceAccount %s for audience %s: %w", sa, auth.Audience, err)
	}
	return tr.Status.Token, nil
}

func tokenAdvice(err error, sa string) string {
	ns, _, _ := strings.Cut(sa, "/")
	switch {
	case apierrors.IsNotFound(err):
		return "no such ServiceAccount in this cluster (the member chart makes " + brokerv1.MemberNamespace + "/" + brokerv1.GatewayServiceAccount + "): pass --xds-service-account NAMESPACE/NAME of one that exists; any admits the gRPC view, only the gateway's the gateway view"
	case apierrors.IsForbidden(err):
		return "you may not mint its tokens: that takes create on serviceaccounts/token in " + ns + " (kubectl auth can-i create serviceaccounts/token -n " + ns + "); ask for it, or pass --xds-service-account of one you may"
	case strings.Contains(err.Error(), "NAMESPACE/NAME"):
		return "e.g. --xds-service-account " + brokerv1.MemberNamespace + "/" + brokerv1.GatewayServiceAccount
	}
	return "the apiserver refused the TokenRequest; its message says why"
}

// handshake dials the server with TLS, as gRPC will, and returns the
// SPIFFE id of its certificate (nil if it carries none). A failed
// handshake says why in its error; tlsAdvice turns that into what to do.
func handshake(ctx context.Context, addr string, cfg *tls.Config) (*spiffeURI, error) {
	ctx, cancel := context.WithTimeout(ctx, xdsAnswerTimeout)
	defer cancel()
	c := cfg.Clone()
	c.NextProtos = []string{"h2"}
	conn, err := (&tls.Dialer{Config: c}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, newHandshakeError(addr, cfg.ServerName, err)
	}
	defer conn.Close()
	certs := conn.(*tls.Conn).ConnectionState().PeerCertificates
	for _, u := range certs[0].URIs {
		if u.Scheme == "spiffe" {
			return &spiffeURI{Host: u.Host, Path: u.Path}, nil
		}
	}
	return nil, nil
}

// spiffeURI is the server certificate's SPIFFE id.
type spiffeURI struct{ Host, Path string }

func (u *spiffeURI) String() string {
	if u == nil {
		return "a certificate with no SPIFFE id"
	}
	return "spiffe://" + u.Host + u.Path
}

// handshakeError is a failed TLS handshake, sorted by what went wrong:
// tlsAdvice says what to do about each kind.
type handshakeError struct {
	kind handshakeKind
	msg  string
	err  error
}

type handshakeKind int

const (
	otherFailure handshakeKind = iota
	wrongName
	unknownIssuer
	expired
	notTLS
	unreachable
)

func (e *handshakeError) Error() string { return e.msg }
func (e *handshakeError) Unwrap() error { return e.err }

func newHandshakeError(addr, serverName string, err error) *handshakeError {
	var hostname x509.HostnameError
	var unknown x509.UnknownAuthorityError
	var invalid x509.CertificateInvalidError
	var record tls.RecordHeaderError
	var op *net.OpError
	e := func(k handshakeKind, format string, args ...any) *handshakeError {
		return &handshakeError{kind: k, msg: fmt.Sprintf(format, args...), err: err}
	}
	switch {
	case errors.As(err, &hostname):
		return e(wrongName, "the certificate of the server at %s is not for %s: it names %s", addr, serverName, certNames(hostname.Certificate))
	case errors.As(err, &unknown):
		issuer := "an unknown issuer"
		if unknown.Cert != nil {
			issuer = unknown.Cert.Issuer.String()
		}
		return e(unknownIssuer, "the certificate of the server at %s (issued by %s) does not chain to the clusterset's roots", addr, issuer)
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return e(expired, "the certificate of the server at %s has expired or is not yet valid: %v", addr, invalid)
	case errors.As(err, &record):
		return e(notTLS, "the server at %s does not speak TLS: it serves plaintext gRPC", addr)
	case errors.As(err, &op) && op.Op == "dial":
		return e(unreachable, "nothing answers at %s: %v", addr, op.Err)
	case errors.Is(err, context.DeadlineExceeded):
		return e(otherFailure, "no TLS handshake with %s within %s", addr, xdsAnswerTimeout)
	}
	return e(otherFailure, "TLS handshake with %s: %v", addr, err)
}

func certNames(c *x509.Certificate) string {
	if c == nil {
		return "no name"
	}
	names := append([]string{}, c.DNSNames...)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 {
		return "no DNS name"
	}
	return strings.Join(names, ", ")
}

func (d *diagnosis) tlsAdvice(err error) string {
	var he *handshakeError
	if !errors.As(err, &he) {
		return "is " + d.xdsServer + " an `isthmus xds` listener?"
	}
	switch he.kind {
	case wrongName:
		return "pass --xds-server-name with a name the certificate carries (the xDS server's --server-names)"
	case unknownIssuer:
		return "the server's intermediate is not under these roots: it belongs to another clusterset, or was issued before the root was rotated (run isthmusctl join for this cluster again, then restart isthmus xds); or pass the right --xds-ca-file"
	case expired:
		return "the xDS server renews its certificate from Secret " + brokerv1.MemberNamespace + "/" + brokerv1.IntermediateCASecret + ": check that the intermediate there is current (isthmusctl join renews it) and the server's log"
	case notTLS:
		return "an `isthmus xds` listening on loopback serves plaintext: pass --xds-plaintext"
	case unreachable:
		return "is `isthmus xds` running and reachable at " + d.xdsServer + "? e.g. kubectl -n " + brokerv1.MemberNamespace + " port-forward svc/isthmus-xds 15010, then --xds-server localhost:15010"
	}
	return "is " + d.xdsServer + " an `isthmus xds` listener?"
}

// streamAdvice says what to do when the server refused the stream for
// its credentials (the message says why, in the server's words).
func (d *diagnosis) streamAdvice(err error) (string, bool) {
	switch status.Code(err) {
	case codes.Unauthenticated:
		if d.xdsConn.serviceAccount == "" {
			return "the server asks for a token: pass --xds-service-account NAMESPACE/NAME", true
		}
		return "the server did not accept the token of " + d.xdsConn.serviceAccount + ": is it this cluster's xDS server (it reviews tokens with its own apiserver)? Its log and isthmus_xds_unauthenticated_streams_total say more", true
	case codes.PermissionDenied:
		return "the gateway view (it carries the gateway's key) is only for the gateway's ServiceAccount: pass --xds-service-account " + brokerv1.MemberNamespace + "/" + brokerv1.GatewayServiceAccount, true
	case codes.Unavailable:
		if strings.Contains(err.Error(), "review") {
			return "the xDS server could not review the token with its apiserver (TokenReview failed): check the server's RBAC (create tokenreviews) and its log", true
		}
	}
	return "", false
}

// bearerToken sends a ServiceAccount token as the authorization header
// of every stream, as gRPC's jwt_token_file call credentials do; only
// over TLS.
type bearerToken string

func (t bearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}

func (bearerToken) RequireTransportSecurity() bool { return true }
