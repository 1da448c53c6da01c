package identity

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"
)

func pemOf(t testing.TB, ca *CA) (cert, key, bundle []byte) {
	t.Helper()
	cert, key, bundle, err := ca.PEM()
	if err != nil {
		t.Fatal(err)
	}
	return cert, key, bundle
}

// TestLoadCARoundTrip stores the root and an intermediate as PEM (as in
// their Secrets), loads them back, and issues with what was loaded.
func TestLoadCARoundTrip(t *testing.T) {
	cs := newClusterset(t)

	root, err := LoadCA(pemOf(t, cs.root))
	if err != nil {
		t.Fatalf("loading the root: %v", err)
	}
	if root.IsIntermediate() || root.Domain() != domain || !root.Certificate().Equal(cs.root.cert) {
		t.Errorf("loaded root: %s", root)
	}
	gamma, err := root.IssueIntermediate("gamma", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	a, err := LoadCA(pemOf(t, cs.a))
	if err != nil {
		t.Fatalf("loading alpha's intermediate: %v", err)
	}
	if !a.IsIntermediate() || a.Domain() != "alpha."+domain || a.ClustersetDomain() != domain {
		t.Errorf("loaded intermediate: %s (clusterset %s)", a, a.ClustersetDomain())
	}
	bundle := cs.root.TrustBundle()
	for _, ca := range []*CA{a, gamma} {
		id := "spiffe://" + ca.Domain() + "/ns/demo/sa/web"
		leaf := issue(t, ca, id)
		if got, err := bundle.Verify(leaf.certs, time.Now(), id); err != nil || got.String() != id {
			t.Errorf("leaf of the loaded %s: %s, %v", ca, got, err)
		}
	}
	// The PEM of a loaded CA is the PEM it was loaded from.
	c1, k1, b1 := pemOf(t, cs.a)
	c2, k2, b2 := pemOf(t, a)
	if !bytes.Equal(c1, c2) || !bytes.Equal(k1, k2) || !bytes.Equal(b1, b2) {
		t.Error("PEM of a loaded intermediate differs from the original")
	}
}

// operatorRoot is a CA an operator might bring: self-signed, no name
// constraints, its key as SEC 1 "EC PRIVATE KEY".
func operatorRoot(t *testing.T, pathLen int) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "Example Corp mesh root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, MaxPathLen: pathLen, MaxPathLenZero: pathLen == 0,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	sec1, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1})
}

// TestLoadRoot imports an operator's own root and uses it as the root role.
func TestLoadRoot(t *testing.T) {
	certPEM, keyPEM := operatorRoot(t, -1)
	root, err := LoadRoot(domain, certPEM, keyPEM, nil)
	if err != nil {
		t.Fatalf("importing an operator's root: %v", err)
	}
	a, err := root.IssueIntermediate("alpha", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf := issue(t, a, gatewayA)
	if _, err := root.TrustBundle().Verify(leaf.certs, time.Now(), gatewayA); err != nil {
		t.Errorf("leaf under an imported root: %v", err)
	}
	// Stored and loaded again by the clusterset domain it was imported for.
	c, k, _ := pemOf(t, root)
	if _, err := LoadRoot(domain, c, k, nil); err != nil {
		t.Errorf("reloading the imported root: %v", err)
	}

	// An operator's issuing CA below its offline root: the chain is
	// stored without the anchor, which is the bundle.
	subCA := operatorSubCA(t, root)
	sc, sk, sb := pemOf(t, subCA)
	if len(certBlocksOf(sc)) != 1 {
		t.Fatalf("sub-CA PEM holds %d certificates, want 1", len(certBlocksOf(sc)))
	}
	loaded, err := LoadRoot(domain, sc, sk, sb)
	if err != nil {
		t.Fatalf("loading an operator's issuing CA with its bundle: %v", err)
	}
	ga, err := loaded.IssueIntermediate("alpha", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	gl := issue(t, ga, gatewayA)
	if len(gl.certs) != 3 {
		t.Errorf("leaf under an issuing CA has a chain of %d, want leaf, intermediate, issuing CA", len(gl.certs))
	}
	if _, err := loaded.TrustBundle().Verify(gl.certs, time.Now(), gatewayA); err != nil {
		t.Errorf("leaf under an operator's issuing CA: %v", err)
	}
	if _, err := LoadRoot(domain, sc, sk, nil); err == nil || !strings.Contains(err.Error(), "self-signed") {
		t.Errorf("an issuing CA without its anchor or bundle: %v", err)
	}

	zeroCert, zeroKey := operatorRoot(t, 0)
	otherCert, _ := operatorRoot(t, -1)
	ours := newClusterset(t)
	oursCert, oursKey, _ := pemOf(t, ours.root)
	tests := []struct {
		name      string
		domain    string
		cert, key []byte
		want      string
	}{
		{"path length 0", domain, zeroCert, zeroKey, "path length 0"},
		{"key of another certificate", domain, otherCert, keyPEM, "does not belong"},
		{"constraint excluding the domain", "other.example", oursCert, oursKey, "excludes the clusterset domain other.example"},
		{"bad domain", "Not_A_Domain", certPEM, keyPEM, "not a DNS label"},
		{"chain without an anchor", domain, pemOfCert(ours.a.cert), keyPEM, "self-signed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadRoot(tt.domain, tt.cert, tt.key, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("LoadRoot: %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func pemOfCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// TestLoadCARefusals checks that bad PEM gets a clear error that never
// quotes the key.
func TestLoadCARefusals(t *testing.T) {
	cs := newClusterset(t)
	cert, key, bundle := pemOf(t, cs.a)
	_, bKey, _ := pemOf(t, cs.b)
	foreign := newClusterset(t)
	_, _, foreignBundle := pemOf(t, foreign.root)
	leaf := issue(t, cs.a, gatewayA)
	expired := cs.a.WithClock(fixedClock(cs.a.cert.NotAfter.Add(time.Minute)))

	tests := []struct {
		name              string
		cert, key, bundle []byte
		want              string
	}{
		{"empty certificate", nil, key, bundle, "CA certificate: no PEM CERTIFICATE block"},
		{"empty bundle", cert, key, nil, "trust bundle: no PEM CERTIFICATE block"},
		{"empty key", cert, nil, bundle, "private key: no PEM block"},
		{"key in the certificate's place", key, key, bundle, `PEM block 1 is a "PRIVATE KEY", want CERTIFICATE`},
		{"garbage after the certificate", append(append([]byte{}, cert...), "trailing junk"...), key, bundle, "are not PEM"},
		{"corrupt certificate", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{0x30, 0x03, 1, 2, 3}}), key, bundle, "PEM block 1"},
		{"corrupt key", cert, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{0x30, 0x03, 1, 2, 3}}), bundle, "private key: parsing PRIVATE KEY"},
		{"two keys", cert, append(append([]byte{}, key...), key...), bundle, "more than one PEM block"},
		{"unknown key type", cert, pem.EncodeToMemory(&pem.Block{Type: "OPENSSH PRIVATE KEY", Bytes: []byte{1}}), bundle, `"OPENSSH PRIVATE KEY"`},
		{"another cluster's key", cert, bKey, bundle, "does not belong"},
		{"another clusterset's bundle", cert, key, foreignBundle, "does not verify against the trust bundle"},
		{"a leaf is no CA", leaf.CertChainPEM, leaf.KeyPEM, bundle, "has 0 permitted URI domains"},
		{"oversized", bytes.Repeat([]byte("A"), maxPEM+1), key, bundle, "more than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadCA(tt.cert, tt.key, tt.bundle)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("LoadCA: %v, want an error containing %q", err, tt.want)
			}
			assertNoKey(t, err.Error(), key, bKey)
		})
	}
	// An expired CA says so when it is used.
	if _, err := expired.IssueLeaf(gatewayA, time.Hour); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("expired CA issuing: %v", err)
	}
}

// operatorSubCA is an issuing CA signed by root, pathlen 1, without name
// constraints, as an operator's PKI might hand out.
func operatorSubCA(t *testing.T, root *CA) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := sign(&x509.Certificate{
		Subject: pkix.Name{CommonName: "Example Corp mesh issuing CA"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, MaxPathLen: 1, KeyUsage: x509.KeyUsageCertSign,
	}, root, key)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{cert: cert, key: key, roots: root.roots, domain: domain, clock: systemClock{}}
}

func certBlocksOf(data []byte) []*pem.Block {
	var out []*pem.Block
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return out
		}
		out = append(out, b)
	}
}
