package xds

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"strings"
	"testing"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/xds/model"
	"github.com/isthmus-dev/isthmus/xds/server"
	"github.com/isthmus-dev/isthmus/xds/source"
	"github.com/isthmus-dev/isthmus/xds/translate"
)

// TestEvictedMemberRefusedAtIngress: the gateway's mTLS ingress accepts a
// client certificate of a cluster only while that cluster is in the
// clusterset. Once b's Cluster record is gone (evicted), a workload
// certificate b's intermediate issues, which still chains to the root,
// is refused by the validation context the xDS server sends, as Envoy
// applies it (chain to the ROOTCA secret, then any SAN matcher); a's and
// c's are still accepted.
func TestEvictedMemberRefusedAtIngress(t *testing.T) {
	p := newPKI(t)
	local, clusters := threeClusters(model.Gateway)
	e := newEnv(t, local, clusters)
	gw, err := p.ca["a"].IssueLeaf(brokerv1.GatewaySPIFFEID("a", brokerv1.DefaultClustersetDomain), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	e.ctrl.SetGatewayCertificates(t.Context(), gw.CertChainPEM, gw.KeyPEM, gw.BundlePEM)
	a1 := startBackend(t, "a1")
	e.set(echoKey, echoService(map[string][]model.Endpoint{"a": {a1.endpoint(true)}}))
	leaf := map[string][]*x509.Certificate{}
	for _, c := range []string{"a", "b", "c"} {
		l, err := p.ca[c].IssueLeaf(brokerv1.WorkloadSPIFFEID(c, brokerv1.DefaultClustersetDomain, "demo", "client"), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		leaf[c] = parseChain(t, l.CertChainPEM)
	}
	check := func(when string, want map[string]bool) {
		t.Helper()
		vc, roots := ingressValidation(t, e)
		for c, ok := range want {
			err := envoyAccepts(vc, roots, leaf[c])
			if (err == nil) != ok {
				t.Errorf("%s: %s's workload certificate: %v, want accepted %v", when, c, err, ok)
			}
		}
	}
	check("b a member", map[string]bool{"a": true, "b": true, "c": true})

	e.models.mu.Lock()
	delete(e.models.clusters, "b")
	e.models.mu.Unlock()
	e.ctrl.Apply(t.Context(), source.Change{Clusters: true})
	check("b evicted", map[string]bool{"a": true, "b": false, "c": true})

	e.setCluster(&model.Cluster{ID: "b", Region: "us", Healthy: true})
	check("b joined again", map[string]bool{"a": true, "b": true, "c": true})
}

// ingressValidation is the ingress listener's validation context (its
// SAN matchers; every chain has the same) and the ROOTCA secret's roots,
// as the gateway view serves them.
func ingressValidation(t *testing.T, e *env) (*tlsv3.CertificateValidationContext, *x509.CertPool) {
	t.Helper()
	res := e.srv.ViewResources(server.GatewayView)
	var vc *tlsv3.CertificateValidationContext
	for _, r := range res[resource.ListenerType] {
		l := r.(*listenerv3.Listener)
		if l.GetName() != translate.IngressListener {
			continue
		}
		for _, ch := range l.GetFilterChains() {
			var d tlsv3.DownstreamTlsContext
			if err := ch.GetTransportSocket().GetTypedConfig().UnmarshalTo(&d); err != nil {
				t.Fatal(err)
			}
			vc = d.GetCommonTlsContext().GetCombinedValidationContext().GetDefaultValidationContext()
		}
	}
	if vc == nil {
		t.Fatal("no ingress chain served")
	}
	roots := x509.NewCertPool()
	for _, r := range res[resource.SecretType] {
		s := r.(*tlsv3.Secret)
		if s.GetName() == translate.SecretRoots {
			roots.AppendCertsFromPEM(s.GetValidationContext().GetTrustedCa().GetInlineBytes())
		}
	}
	return vc, roots
}

// envoyAccepts applies a validation context as Envoy does: the chain must
// verify to the roots, then a URI SAN of the leaf must match one typed SAN
// matcher. gRPC reads the legacy matchers instead, so both must agree.
func envoyAccepts(vc *tlsv3.CertificateValidationContext, roots *x509.CertPool, chain []*x509.Certificate) error {
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return err
	}
	var typed, legacy bool
	for _, u := range chain[0].URIs {
		for _, m := range vc.GetMatchTypedSubjectAltNames() {
			typed = typed || (m.GetSanType() == tlsv3.SubjectAltNameMatcher_URI && matches(m.GetMatcher(), u.String()))
		}
		//lint:ignore SA1019 gRPC reads the legacy field
		for _, m := range vc.GetMatchSubjectAltNames() {
			legacy = legacy || matches(m, u.String())
		}
	}
	if typed != legacy {
		return fmt.Errorf("the typed (Envoy) and legacy (gRPC) SAN matchers disagree: %v, %v", typed, legacy)
	}
	if !typed {
		return fmt.Errorf("%v matches no SAN matcher of the ingress", chain[0].URIs)
	}
	return nil
}

func matches(m *matcherv3.StringMatcher, s string) bool {
	switch {
	case m.GetExact() != "":
		return s == m.GetExact()
	case m.GetPrefix() != "":
		return strings.HasPrefix(s, m.GetPrefix())
	}
	return false // no other kind is sent; an unknown one matches nothing
}

func parseChain(t *testing.T, data []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for {
		var b *pem.Block
		if b, data = pem.Decode(data); b == nil {
			return out
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}
