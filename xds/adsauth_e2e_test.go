package xds

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/credentials/jwt"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/isthmus-dev/isthmus/test/cluster"
	"github.com/isthmus-dev/isthmus/xds/auth"
	"github.com/isthmus-dev/isthmus/xds/model"
	"github.com/isthmus-dev/isthmus/xds/server"
)

// tokenFile writes a token the real TokenRequest API minted for
// isthmus-system/sa, bound to audiences (none: the apiserver's own), to
// a file, as the kubelet writes a projected token.
func tokenFile(t *testing.T, kube kubernetes.Interface, sa string, audiences ...string) string {
	t.Helper()
	ctx := context.Background()
	_, err := kube.CoreV1().ServiceAccounts("isthmus-system").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{})
	if err != nil && !strings.Contains(err.Error(), "already exists") {
		t.Fatal(err)
	}
	ttl := int64(3600)
	tr, err := kube.CoreV1().ServiceAccounts("isthmus-system").CreateToken(ctx, sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: audiences, ExpirationSeconds: &ttl},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte(tr.Status.Token), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestADSOverTLSWithTokens runs the xDS server as `isthmus xds` does: over
// TLS with a serving certificate issued from the cluster's intermediate
// (read from its Secret on a real apiserver), checking each stream's token
// with the real TokenReview API. Clients verify the server against the
// clusterset's trust bundle and send tokens the real TokenRequest API
// minted, with gRPC's own call credentials reading the token file: a
// proxyless gRPC client (gRPC-Go's xDS client) is served; the gateway view
// goes only to the gateway's ServiceAccount; wrong audience, another
// ServiceAccount and no token are refused with a readable message and
// counted; a plaintext client and a client trusting another root never
// get a stream.
func TestADSOverTLSWithTokens(t *testing.T) {
	cs := cluster.Start(t, cluster.Options{Broker: true})
	kube := cs.Broker.Client
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "isthmus-system"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p := newPKI(t)
	secret := caSecret(t, p.ca["a"], "")
	if _, err := kube.CoreV1().Secrets("isthmus-system").Create(ctx, secret, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	local, clusters := threeClusters(model.Direct)
	e := newEnvWith(t, local, clusters, server.Config{
		Authenticator: auth.NewReviewer(kube, ""), GatewayServiceAccount: "isthmus-system/isthmus-gateway",
		// Every client here is on loopback: the address check passes, so
		// what decides is the token.
		GatewayPeer: func(a netip.Addr) bool { return a.IsLoopback() },
	}, true)
	if err := e.ctrl.ServeCertificates(ctx, CertificatesConfig{
		Kube: kube, CASecretNamespace: "isthmus-system", CASecretName: "isthmus-ca", TTL: time.Hour, Registry: prometheus.NewRegistry(),
		Serving: &ServingCert{Namespace: "isthmus-system", ServiceAccount: "isthmus-xds", DNSNames: []string{"localhost"}},
	}); err != nil {
		t.Fatal(err)
	}
	addr := "localhost:" + e.addr[strings.LastIndex(e.addr, ":")+1:]
	bundle := filepath.Join(t.TempDir(), "ca.crt")
	_, _, bundlePEM, err := p.ca["a"].PEM()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bundle, bundlePEM, 0o644); err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(bundlePEM)

	gatewayToken := tokenFile(t, kube, "isthmus-gateway", auth.Audience)
	clientToken := tokenFile(t, kube, "client", auth.Audience)
	apiserverToken := tokenFile(t, kube, "isthmus-gateway")

	t.Run("proxyless gRPC client with a token", func(t *testing.T) {
		a1 := startBackend(t, "a1")
		e.set(echoKey, echoService(map[string][]model.Endpoint{"a": {a1.endpoint(true)}}))
		boot := fmt.Sprintf(`{"xds_servers":[{"server_uri":%q,"channel_creds":[{"type":"tls","config":{"ca_certificate_file":%q}}],
"call_creds":[{"type":"jwt_token_file","config":{"jwt_token_file":%q}}]}],
"node":{"id":"test-a","metadata":{%q:"grpc",%q:"a"}}}`, addr, bundle, clientToken, server.MetadataRole, server.MetadataCluster)
		cc := e.dial("echo.demo.svc.clusterset.local", []byte(boot), nil)
		waitFor(t, cc, "an RPC routed by the xDS server over TLS", func(r tally) bool { return r.by["a1"] == 20 })
	})

	gatewayNode := node("gw", "gateway")
	for _, tc := range []struct {
		name  string
		token string
		node  *corev3.Node
		code  codes.Code
		says  string
	}{
		{"the gateway's token: its key pair", gatewayToken, gatewayNode, codes.OK, ""},
		{"another ServiceAccount's token asks for the gateway view", clientToken, gatewayNode, codes.PermissionDenied, "only for ServiceAccount isthmus-system/isthmus-gateway; the stream's token is isthmus-system/client's"},
		{"the gateway's token for the apiserver's audience", apiserverToken, gatewayNode, codes.Unauthenticated, "is invalid for the target audiences"},
		{"no token, as the gateway", "", gatewayNode, codes.Unauthenticated, "the stream sent none"},
		{"no token, as a gRPC client", "", node("client", "grpc"), codes.Unauthenticated, "the grpc view needs a projected ServiceAccount token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: roots}))}
			if tc.token != "" {
				creds, err := jwt.NewTokenFileCallCredentials(tc.token)
				if err != nil {
					t.Fatal(err)
				}
				opts = append(opts, grpc.WithPerRPCCredentials(creds))
			}
			resp, err := askSecrets(ctx, addr, tc.node, opts...)
			if got := status.Code(err); got != tc.code || !strings.Contains(status.Convert(err).Message(), tc.says) {
				t.Fatalf("%v (%v); want %v saying %q", got, err, tc.code, tc.says)
			}
			if tc.code == codes.OK && !carriesTLSCertificate(resp) {
				t.Fatalf("the gateway was not sent its key pair: %v", resp)
			}
		})
	}
	for reason, want := range map[string]float64{"wrong_service_account": 1, "invalid_token": 1, "no_token": 2} {
		if got := counter(t, e.reg, "isthmus_xds_unauthenticated_streams_total", "reason", reason); got != want {
			t.Errorf("isthmus_xds_unauthenticated_streams_total{reason=%q} = %v, want %v", reason, got, want)
		}
	}

	t.Run("a plaintext client", func(t *testing.T) {
		_, err := askSecrets(ctx, addr, gatewayNode, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("a plaintext client: %v, want no connection", err)
		}
	})
	t.Run("a client trusting another clusterset's root", func(t *testing.T) {
		other := newPKI(t)
		pool := x509.NewCertPool()
		pool.AddCert(other.root.Certificate())
		_, err := askSecrets(ctx, addr, gatewayNode, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool})))
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("a client trusting another root: %v, want a failed handshake", err)
		}
	})
}

// node is a node of cluster a with role.
func node(id, role string) *corev3.Node {
	return &corev3.Node{Id: id, Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
		server.MetadataRole: structpb.NewStringValue(role), server.MetadataCluster: structpb.NewStringValue("a"),
	}}}
}

// askSecrets opens an ADS stream as n, asks for the gateway's secrets and
// returns the first response or the stream's end.
func askSecrets(ctx context.Context, addr string, n *corev3.Node, opts ...grpc.DialOption) (*discoveryv3.DiscoveryResponse, error) {
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	if err := st.Send(&discoveryv3.DiscoveryRequest{Node: n, TypeUrl: resource.SecretType, ResourceNames: []string{"default", "ROOTCA"}}); err != nil {
		return nil, err
	}
	return st.Recv()
}

func carriesTLSCertificate(r *discoveryv3.DiscoveryResponse) bool {
	for _, a := range r.GetResources() {
		if strings.Contains(string(a.GetValue()), "PRIVATE KEY") {
			return true
		}
	}
	return false
}

// counter reads a counter of reg with one label.
func counter(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
