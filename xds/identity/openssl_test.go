package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// opensslVerify runs `openssl verify` on chain[0] with chain[1:] as
// untrusted intermediates and roots as the only anchors, for purpose
// (sslserver or sslclient), and returns its output and whether it
// accepted the chain.
func opensslVerify(t *testing.T, roots []*x509.Certificate, chain []*x509.Certificate, purpose string) (string, bool) {
	t.Helper()
	bin, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatalf("this test needs the openssl binary (apt-get install -y openssl): %v", err)
	}
	dir := t.TempDir()
	write := func(name string, certs []*x509.Certificate) string {
		var b []byte
		for _, c := range certs {
			b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	args := []string{"verify", "-x509_strict", "-purpose", purpose, "-CAfile", write("ca.crt", roots)}
	if len(chain) > 1 {
		args = append(args, "-untrusted", write("untrusted.crt", chain[1:]))
	}
	args = append(args, write("leaf.crt", chain[:1]))
	out, err := exec.Command(bin, args...).CombinedOutput()
	return string(out), err == nil && strings.Contains(string(out), ": OK")
}

// goVerify verifies chain with crypto/x509 for both TLS roles.
func goVerify(roots []*x509.Certificate, chain []*x509.Certificate) error {
	_, err := chain[0].Verify(x509.VerifyOptions{
		Roots:         pool(roots),
		Intermediates: pool(chain[1:]),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	})
	return err
}

// TestChainsVerifyAsRFC5280Reads issues every kind of chain the
// clusterset serves (each cluster's gateway leaf and workload leaves,
// under the default and a multi-label clusterset domain) and has both
// OpenSSL, which reads name constraints as RFC 5280 does (as BoringSSL
// in Envoy does), and Go's verifier accept each. Leaves carry URI SANs
// only, so the constraints are URI constraints only. A leaf forged by one
// cluster's intermediate for another's trust domain must fail in both,
// which shows OpenSSL enforces the URI constraints it is given.
func TestChainsVerifyAsRFC5280Reads(t *testing.T) {
	for _, cd := range []string{domain, "mesh.example.com"} {
		t.Run(cd, func(t *testing.T) {
			root, err := NewRoot(cd, 24*time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			roots := root.roots
			for _, cluster := range []string{"alpha", "c"} {
				inter, err := root.IssueIntermediate(cluster, 12*time.Hour)
				if err != nil {
					t.Fatal(err)
				}
				td := cluster + "." + cd
				for _, id := range []string{
					"spiffe://" + td + "/ns/isthmus-system/sa/isthmus-gateway",
					"spiffe://" + td + "/ns/demo/sa/client",
					"spiffe://" + td + "/ns/default/sa/default",
				} {
					leaf := issue(t, inter, id)
					if n := len(leaf.certs[0].DNSNames); n != 0 {
						t.Errorf("%s has %d DNS SANs; the constraints cover URIs only", id, n)
					}
					for _, purpose := range []string{"sslserver", "sslclient"} {
						if out, ok := opensslVerify(t, roots, leaf.certs, purpose); !ok {
							t.Errorf("openssl verify -purpose %s of %s: %s", purpose, id, out)
						}
					}
					if err := goVerify(roots, leaf.certs); err != nil {
						t.Errorf("Go's verifier on %s: %v", id, err)
					}
				}
			}
			a, err := root.IssueIntermediate("alpha", time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			forged := forge(t, a, "spiffe://beta."+cd+"/ns/demo/sa/client")
			if out, ok := opensslVerify(t, roots, forged, "sslclient"); ok || !strings.Contains(out, "permitted subtree violation") {
				t.Errorf("openssl accepted alpha's intermediate signing beta's identity (or failed for another reason): %s", out)
			}
			if err := goVerify(roots, forged); err == nil {
				t.Error("Go's verifier accepted alpha's intermediate signing beta's identity")
			}
		})
	}
}

// legacyRoot is a root as releases before the fix made it: the URI name
// constraint is the bare clusterset domain, which RFC 5280 reads as that
// one host, so every SPIFFE id under it fails outside Go.
func legacyRoot(t *testing.T, clustersetDomain string) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := sign(&x509.Certificate{
		Subject:   pkix.Name{Organization: []string{"Isthmus"}, CommonName: "Isthmus clusterset root CA " + clustersetDomain},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, MaxPathLen: 1,
		KeyUsage:            x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		PermittedURIDomains: []string{clustersetDomain}, PermittedDNSDomainsCritical: true,
	}, nil, key)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{cert: cert, key: key, roots: []*x509.Certificate{cert}, domain: clustersetDomain, clock: systemClock{}}
}

// TestLegacyRootDetected: a root with the bare-domain constraint is
// refused as the root role with words that say to rotate it; an
// intermediate under it reports the problem (isthmusctl join re-issues
// it then); and during a rotation, with old and new roots in the bundle,
// a chain under the new root verifies in OpenSSL and Go alike.
func TestLegacyRootDetected(t *testing.T) {
	old := legacyRoot(t, domain)
	oldInter, err := old.IssueIntermediate("alpha", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// What the test above guards against, shown on the legacy form.
	leaf := issue(t, oldInter, gatewayA)
	if out, ok := opensslVerify(t, old.roots, leaf.certs, "sslserver"); ok || !strings.Contains(out, "permitted subtree violation") {
		t.Errorf("openssl on a chain under the legacy root: %s", out)
	}

	c, k, _ := pemOf(t, old)
	if _, err := LoadRoot(domain, c, k, nil); err == nil || !strings.Contains(err.Error(), "rotate") {
		t.Errorf("LoadRoot of a legacy root: %v, want an error saying to rotate it", err)
	}
	if _, err := LoadCA(pemOf(t, old)); err == nil || !strings.Contains(err.Error(), "rotate") {
		t.Errorf("LoadCA of a legacy root: %v, want an error saying to rotate it", err)
	}
	// An intermediate under it still loads (running gRPC clients verify
	// with Go and keep working) but says what is wrong.
	loaded, err := LoadCA(pemOf(t, oldInter))
	if err != nil {
		t.Fatalf("LoadCA of an intermediate under a legacy root: %v", err)
	}
	if err := loaded.ConstraintProblem(); err == nil || !strings.Contains(err.Error(), "RFC 5280") {
		t.Errorf("ConstraintProblem of an intermediate under a legacy root: %v", err)
	}

	// The rotation: a new root, both in the bundle, the intermediate
	// issued again under the new one.
	next, err := NewRoot(domain, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	bundle := []*x509.Certificate{old.cert, next.cert}
	both := *next
	both.roots = bundle
	newInter, err := both.IssueIntermediate("alpha", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := newInter.ConstraintProblem(); err != nil {
		t.Errorf("an intermediate under the new root, both roots in the bundle: %v", err)
	}
	newLeaf := issue(t, newInter, gatewayA)
	if out, ok := opensslVerify(t, bundle, newLeaf.certs, "sslserver"); !ok {
		t.Errorf("openssl on a chain under the new root, both roots trusted: %s", out)
	}
	if err := goVerify(bundle, newLeaf.certs); err != nil {
		t.Errorf("Go's verifier on a chain under the new root, both roots trusted: %v", err)
	}
	if err := goVerify(bundle, leaf.certs); err != nil {
		t.Errorf("Go's verifier on a chain under the old root, both roots trusted: %v", err)
	}
}
