package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

const domain = brokerv1.DefaultClustersetDomain

var (
	gatewayA = brokerv1.GatewaySPIFFEID("alpha", domain)
	gatewayB = brokerv1.GatewaySPIFFEID("beta", domain)
)

// clusterset is a root and the intermediates of alpha and beta.
type clusterset struct {
	root, a, b *CA
}

func newClusterset(t testing.TB) clusterset {
	t.Helper()
	root, err := NewRoot(domain, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	a, err := root.IssueIntermediate("alpha", 12*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	b, err := root.IssueIntermediate("beta", 12*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return clusterset{root, a, b}
}

func issue(t testing.TB, ca *CA, id string) *Leaf {
	t.Helper()
	l, err := ca.IssueLeaf(id, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestChainVerifies checks the shape of each certificate and that the
// leaf verifies as an X.509-SVID against the bundle, the way go-spiffe
// (and so our TLS configs) verify it.
func TestChainVerifies(t *testing.T) {
	cs := newClusterset(t)
	leaf := issue(t, cs.a, gatewayA)

	root, inter, lc := cs.root.cert, cs.a.cert, leaf.certs[0]
	if !root.IsCA || root.MaxPathLen != 1 || !selfSigned(root) {
		t.Errorf("root: CA %v, pathlen %d, self-signed %v", root.IsCA, root.MaxPathLen, selfSigned(root))
	}
	if !inter.IsCA || inter.MaxPathLen != 0 || !inter.MaxPathLenZero {
		t.Errorf("intermediate: CA %v, pathlen %d (zero %v), want CA with pathlen 0", inter.IsCA, inter.MaxPathLen, inter.MaxPathLenZero)
	}
	if got := inter.PermittedURIDomains; len(got) != 1 || got[0] != "alpha."+domain || !inter.PermittedDNSDomainsCritical {
		t.Errorf("intermediate URI constraint %v (critical %v), want [alpha.%s], critical", got, inter.PermittedDNSDomainsCritical, domain)
	}
	if _, ok := lc.PublicKey.(*ecdsa.PublicKey); !ok || lc.PublicKeyAlgorithm != x509.ECDSA {
		t.Errorf("leaf key is %T, want ECDSA P-256", lc.PublicKey)
	}
	if lc.IsCA || len(lc.URIs) != 1 || lc.URIs[0].String() != gatewayA || len(lc.DNSNames)+len(lc.IPAddresses)+len(lc.EmailAddresses) != 0 {
		t.Errorf("leaf: CA %v, URIs %v, other SANs %v %v %v", lc.IsCA, lc.URIs, lc.DNSNames, lc.IPAddresses, lc.EmailAddresses)
	}
	if len(lc.ExtKeyUsage) != 2 || lc.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || lc.ExtKeyUsage[1] != x509.ExtKeyUsageClientAuth {
		t.Errorf("leaf extended key usage %v, want serverAuth, clientAuth", lc.ExtKeyUsage)
	}
	if len(leaf.certs) != 2 || !leaf.certs[1].Equal(inter) || len(leaf.Certificate.Certificate) != 2 {
		t.Errorf("leaf chain has %d certificates, want leaf + intermediate", len(leaf.certs))
	}

	// The PEM forms are what a peer or Envoy gets: parse them as an SVID.
	svid, err := x509svid.Parse(leaf.CertChainPEM, leaf.KeyPEM)
	if err != nil {
		t.Fatalf("the leaf is not a conformant X.509-SVID: %v", err)
	}
	if svid.ID.String() != gatewayA {
		t.Errorf("SVID id %s, want %s", svid.ID, gatewayA)
	}
	bundle, err := NewTrustBundle(domain, leaf.BundlePEM)
	if err != nil {
		t.Fatal(err)
	}
	for _, allowed := range [][]string{nil, {gatewayA}, {gatewayB, gatewayA}} {
		id, err := bundle.Verify(svid.Certificates, time.Now(), allowed...)
		if err != nil || id.String() != gatewayA {
			t.Errorf("Verify(allowed %v) = %s, %v; want %s", allowed, id, err, gatewayA)
		}
	}
	if _, err := bundle.Verify(svid.Certificates, time.Now(), gatewayB); err == nil {
		t.Error("Verify accepted alpha's gateway where only beta's is allowed")
	}
	// Another clusterset's root does not vouch for it.
	other, _ := NewRoot(domain, time.Hour)
	if _, err := other.TrustBundle().Verify(svid.Certificates, time.Now()); err == nil {
		t.Error("a foreign root verified alpha's leaf")
	}
}

// forge signs, with ca's key and without IssueLeaf's refusal, a leaf for
// uri: what a compromised cluster could make by hand.
func forge(t *testing.T, ca *CA, uri string) []*x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(uri)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(42), Subject: pkix.Name{CommonName: "forged"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs: []*url.URL{u}, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return []*x509.Certificate{c, ca.cert}
}

// TestClusterCannotMintAnothersIdentity checks that alpha's intermediate
// cannot produce an identity of beta (or of anything outside alpha's trust
// domain): IssueLeaf refuses with a clear error, and a leaf forged with
// alpha's key is rejected by Go's verifier on the name constraint.
func TestClusterCannotMintAnothersIdentity(t *testing.T) {
	cs := newClusterset(t)
	bundle := cs.root.TrustBundle()
	if _, err := bundle.Verify(forge(t, cs.a, gatewayA), time.Now()); err != nil {
		t.Fatalf("control: a hand-made leaf for alpha's own gateway should verify: %v", err)
	}
	tests := []struct {
		name, id  string
		refusal   string
		verifyErr string
	}{
		{"beta's gateway", gatewayB, "is not this CA's alpha." + domain, "not permitted"},
		{"beta's workload", brokerv1.WorkloadSPIFFEID("beta", domain, "demo", "web"), "is not this CA's", "not permitted"},
		// Outside every cluster's trust domain: the bundle refuses before
		// any signature is looked at.
		{"the clusterset domain itself", "spiffe://" + domain + "/ns/x/sa/y", "is not this CA's", "is not a cluster of the clusterset"},
		{"another clusterset", "spiffe://alpha.example.org/ns/x/sa/y", "is not this CA's", "is not a cluster of the clusterset"},
		// Within alpha's constraint for X.509, but no cluster's trust domain.
		{"a subdomain of alpha", "spiffe://sub.alpha." + domain + "/ns/x/sa/y", "is not this CA's", "is not a cluster of the clusterset"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := cs.a.IssueLeaf(tt.id, time.Hour)
			if err == nil || !strings.Contains(err.Error(), tt.refusal) {
				t.Errorf("IssueLeaf(%s) by alpha: %v, want a refusal containing %q", tt.id, err, tt.refusal)
			}
			_, err = bundle.Verify(forge(t, cs.a, tt.id), time.Now())
			if err == nil || !strings.Contains(err.Error(), tt.verifyErr) {
				t.Errorf("verifying a forged %s: %v, want an error containing %q", tt.id, err, tt.verifyErr)
			}
		})
	}
	// The root signs no leaves and an intermediate no CAs.
	if _, err := cs.root.IssueLeaf(gatewayA, time.Hour); err == nil || !strings.Contains(err.Error(), "intermediates only") {
		t.Errorf("root issuing a leaf: %v", err)
	}
	if _, err := cs.a.IssueIntermediate("gamma", time.Hour); err == nil || !strings.Contains(err.Error(), "cannot issue intermediates") {
		t.Errorf("intermediate issuing an intermediate: %v", err)
	}
}

// TestExpiredLeafRejected verifies a ten-minute leaf while it is valid
// (the control) and after it expired, its intermediate still valid.
func TestExpiredLeafRejected(t *testing.T) {
	cs := newClusterset(t)
	leaf := issue(t, cs.a, gatewayA)
	bundle := cs.a.TrustBundle()
	if _, err := bundle.Verify(leaf.certs, time.Now()); err != nil {
		t.Fatalf("control: the leaf should verify while valid: %v", err)
	}
	if _, err := bundle.Verify(leaf.certs, leaf.NotAfter.Add(time.Second)); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("expired leaf: %v, want an expiry error", err)
	}
}

// TestValidityCapped checks that nothing outlives its issuer, and that an
// expired CA issues nothing.
func TestValidityCapped(t *testing.T) {
	cs := newClusterset(t)
	long, err := cs.root.IssueIntermediate("gamma", 365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !long.cert.NotAfter.Equal(cs.root.cert.NotAfter) {
		t.Errorf("intermediate expires %s, after its root's %s", long.cert.NotAfter, cs.root.cert.NotAfter)
	}
	leaf, err := cs.a.IssueLeaf(gatewayA, 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !leaf.NotAfter.Equal(cs.a.cert.NotAfter) {
		t.Errorf("leaf expires %s, after its intermediate's %s", leaf.NotAfter, cs.a.cert.NotAfter)
	}
	later := cs.a.WithClock(fixedClock(cs.a.cert.NotAfter.Add(time.Second)))
	if _, err := later.IssueLeaf(gatewayA, time.Hour); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("an expired intermediate issued a leaf: %v", err)
	}
	for _, bad := range []time.Duration{0, -time.Hour} {
		if _, err := cs.a.IssueLeaf(gatewayA, bad); err == nil {
			t.Errorf("IssueLeaf with TTL %v succeeded", bad)
		}
	}
}

// TestBadNames checks the refusals for names that cannot be identities.
func TestBadNames(t *testing.T) {
	cs := newClusterset(t)
	for _, d := range []string{"", "Upper.case", "under_score.x", "a..b", "-a.b", strings.Repeat("a", 64) + ".b"} {
		if _, err := NewRoot(d, time.Hour); err == nil {
			t.Errorf("NewRoot(%q) succeeded", d)
		}
	}
	for _, c := range []string{"", "Alpha", "a.b", "a_b", "-a", strings.Repeat("a", 64)} {
		if _, err := cs.root.IssueIntermediate(c, time.Hour); err == nil {
			t.Errorf("IssueIntermediate(%q) succeeded", c)
		}
	}
	for _, id := range []string{"", "not a uri", "https://alpha." + domain + "/ns/a/sa/b", "spiffe://alpha." + domain} {
		if _, err := cs.a.IssueLeaf(id, time.Hour); err == nil {
			t.Errorf("IssueLeaf(%q) succeeded", id)
		}
	}
}

type fixedClock time.Time

func (c fixedClock) Now() time.Time                         { return time.Time(c) }
func (c fixedClock) After(d time.Duration) <-chan time.Time { return time.After(d) }
