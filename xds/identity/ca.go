// Package identity issues the clusterset's mTLS identities: a clusterset
// root, one intermediate CA per cluster whose X.509 URI name constraint
// confines it to that cluster's SPIFFE trust domain, and short-lived
// X.509-SVID leaves for gateways and workloads, renewed before they expire.
// It verifies peers and builds tls.Configs with go-spiffe. It holds crypto
// only (crypto/x509, crypto/ecdsa, go-spiffe); storing CAs in Secrets and
// serving leaves over SDS belong to its callers.
package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// backdate is how far before "now" a certificate's validity starts, so
// that a peer whose clock is a little behind accepts it at once.
const backdate = time.Minute

// Clock tells the time and waits; tests inject a fake one.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time                         { return time.Now() }
func (systemClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// CA is a certificate authority of the clusterset: either the root role,
// which issues one intermediate per cluster, or a cluster's intermediate,
// which issues leaves in that cluster's trust domain only. Its methods are
// safe for concurrent use; it never changes after it is made.
type CA struct {
	cert *x509.Certificate
	key  crypto.Signer
	// chain holds the certificates between cert and the trust anchor (empty
	// when cert is itself the anchor or is signed by it directly).
	chain []*x509.Certificate
	// roots is the trust bundle: the anchors every member trusts.
	roots []*x509.Certificate
	// domain is the clusterset domain for the root role and the cluster's
	// trust domain for an intermediate.
	domain       string
	intermediate bool
	clock        Clock
}

// NewRoot makes a self-signed clusterset root with a fresh P-256 key,
// valid for ttl. Its URI name constraint permits only SPIFFE ids whose
// trust domain is a subdomain of clustersetDomain: RFC 5280 reads a URI
// constraint "example.com" as that one host and ".example.com" as any
// host below it, and trust domains are <cluster>.<clusterset domain>.
func NewRoot(clustersetDomain string, ttl time.Duration) (*CA, error) {
	if err := checkDomain(clustersetDomain); err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating the root key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		Subject:                     pkix.Name{Organization: []string{"Isthmus"}, CommonName: "Isthmus clusterset root CA " + clustersetDomain},
		NotBefore:                   now.Add(-backdate),
		NotAfter:                    now.Add(ttl),
		IsCA:                        true,
		BasicConstraintsValid:       true,
		MaxPathLen:                  1,
		KeyUsage:                    x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		PermittedURIDomains:         []string{"." + clustersetDomain},
		PermittedDNSDomainsCritical: true,
	}
	cert, err := sign(tmpl, nil, key)
	if err != nil {
		return nil, fmt.Errorf("signing the root certificate: %w", err)
	}
	return &CA{cert: cert, key: key, roots: []*x509.Certificate{cert}, domain: clustersetDomain, clock: systemClock{}}, nil
}

// LoadRoot loads the root role from an operator's own CA or from what PEM
// wrote: certPEM holds the signing certificate first, then any
// certificates up to the anchor; keyPEM is its private key; bundlePEM is
// the trust bundle, or empty to take the chain's last certificate, which
// must then be self-signed (a lone self-signed certificate is its own
// anchor).
func LoadRoot(clustersetDomain string, certPEM, keyPEM, bundlePEM []byte) (*CA, error) {
	if err := checkDomain(clustersetDomain); err != nil {
		return nil, err
	}
	certs, err := parseCerts("root CA certificate", certPEM)
	if err != nil {
		return nil, err
	}
	var roots []*x509.Certificate
	if len(bundlePEM) == 0 {
		anchor := certs[len(certs)-1]
		if !selfSigned(anchor) {
			return nil, errors.New("the root CA certificate chain does not end with a self-signed certificate: append the chain up to its root")
		}
		roots = []*x509.Certificate{anchor}
	} else if roots, err = parseCerts("trust bundle", bundlePEM); err != nil {
		return nil, err
	}
	ca := &CA{cert: certs[0], roots: roots, domain: clustersetDomain, clock: systemClock{}}
	for _, c := range certs[1:] {
		if !contains(roots, c) {
			ca.chain = append(ca.chain, c)
		}
	}
	if ca.key, err = parseKey(keyPEM); err != nil {
		return nil, err
	}
	if err := ca.check(); err != nil {
		return nil, err
	}
	if ca.cert.MaxPathLenZero {
		return nil, errors.New("the root CA certificate has path length 0, so it cannot sign the clusters' intermediates")
	}
	if err := ca.ConstraintProblem(); err != nil {
		return nil, err
	}
	return ca, nil
}

// hostOnly reports whether constraints name the clusterset domain itself
// as a URI host: how roots were made before NewRoot used the leading dot.
func hostOnly(constraints []string, clustersetDomain string) bool {
	for _, c := range constraints {
		if c == clustersetDomain {
			return true
		}
	}
	return false
}

func legacyRootError(c *x509.Certificate) error {
	return fmt.Errorf("root CA certificate %q constrains SPIFFE ids to the URI host %v, which RFC 5280 verifiers (OpenSSL, BoringSSL in Envoy) read as that one host, "+
		"so they reject every trust domain below it (only Go accepts it; earlier releases made roots so): rotate the clusterset root "+
		"(docs/operations.md, \"Rotating a root with a host-only name constraint\")", c.Subject.CommonName, c.PermittedURIDomains)
}

// ConstraintProblem says why a verifier that reads URI name constraints
// as RFC 5280 does (OpenSSL, BoringSSL in Envoy) would reject what this
// CA issues although Go's verifier accepts it, or returns nil. It checks
// every chain from the CA to its bundle, so during a root rotation an
// intermediate issued under the new root is good while the old root is
// still trusted.
func (ca *CA) ConstraintProblem() error {
	host := ca.domain // an intermediate's leaves have exactly its trust domain
	if !ca.intermediate {
		host = "x." + ca.domain
	}
	chains, err := ca.cert.Verify(x509.VerifyOptions{
		Roots:         pool(ca.roots),
		Intermediates: pool(ca.chain),
		CurrentTime:   ca.clock.Now(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return fmt.Errorf("CA certificate %q does not verify against the trust bundle: %w", ca.cert.Subject.CommonName, err)
	}
	var blocking *x509.Certificate
	for _, chain := range chains {
		blocking = nil
		for _, c := range chain {
			if len(c.PermittedURIDomains) > 0 && !permits(c.PermittedURIDomains, host) {
				blocking = c
				break
			}
		}
		if blocking == nil {
			return nil
		}
	}
	if hostOnly(blocking.PermittedURIDomains, ca.ClustersetDomain()) {
		return legacyRootError(blocking)
	}
	what := "the trust domain " + ca.domain
	if !ca.intermediate {
		what = "the clusterset domain " + ca.domain
	}
	return fmt.Errorf("certificate %q of the CA chain constrains URIs to %v, which excludes %s as RFC 5280 verifiers read it", blocking.Subject.CommonName, blocking.PermittedURIDomains, what)
}

// LoadCA loads a CA that PEM wrote: certPEM is its certificate followed by
// any certificates up to the anchor, keyPEM its key, bundlePEM the trust
// bundle. Its domain is its one permitted URI domain (without the root's
// leading dot); a certificate with path length 0 is a cluster's
// intermediate, any other the root role. A root whose constraint RFC 5280
// verifiers read as excluding its trust domains is refused; an
// intermediate under one loads (Go's verifier accepts its leaves) and
// says so in ConstraintProblem.
func LoadCA(certPEM, keyPEM, bundlePEM []byte) (*CA, error) {
	certs, err := parseCerts("CA certificate", certPEM)
	if err != nil {
		return nil, err
	}
	roots, err := parseCerts("trust bundle", bundlePEM)
	if err != nil {
		return nil, err
	}
	ca := &CA{cert: certs[0], roots: roots, clock: systemClock{}}
	for _, c := range certs[1:] {
		if !contains(roots, c) {
			ca.chain = append(ca.chain, c)
		}
	}
	if len(ca.cert.PermittedURIDomains) != 1 {
		return nil, fmt.Errorf("CA certificate %q has %d permitted URI domains, want exactly one (its domain); load an operator's own root with LoadRoot",
			ca.cert.Subject.CommonName, len(ca.cert.PermittedURIDomains))
	}
	ca.intermediate = ca.cert.MaxPathLen == 0 && ca.cert.MaxPathLenZero
	ca.domain = ca.cert.PermittedURIDomains[0]
	if !ca.intermediate {
		if !strings.HasPrefix(ca.domain, ".") {
			return nil, legacyRootError(ca.cert)
		}
		ca.domain = ca.domain[1:]
	}
	if err := checkDomain(ca.domain); err != nil {
		return nil, fmt.Errorf("CA certificate %q: %w", ca.cert.Subject.CommonName, err)
	}
	if ca.intermediate {
		if _, err := spiffeid.TrustDomainFromString(ca.domain); err != nil {
			return nil, fmt.Errorf("intermediate CA domain %q is not a SPIFFE trust domain: %w", ca.domain, err)
		}
	}
	if ca.key, err = parseKey(keyPEM); err != nil {
		return nil, err
	}
	if err := ca.check(); err != nil {
		return nil, err
	}
	return ca, nil
}

// check verifies that the key matches the certificate, that the
// certificate may sign certificates, and that it chains to the bundle now.
func (ca *CA) check() error {
	if !ca.cert.IsCA || ca.cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return fmt.Errorf("certificate %q is not a CA certificate allowed to sign certificates", ca.cert.Subject.CommonName)
	}
	pub, ok := ca.key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(ca.cert.PublicKey) {
		return fmt.Errorf("the private key does not belong to CA certificate %q", ca.cert.Subject.CommonName)
	}
	if _, err := ca.cert.Verify(x509.VerifyOptions{
		Roots:         pool(ca.roots),
		Intermediates: pool(ca.chain),
		CurrentTime:   ca.clock.Now(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return fmt.Errorf("CA certificate %q does not verify against the trust bundle: %w", ca.cert.Subject.CommonName, err)
	}
	return nil
}

// IssueIntermediate issues cluster's intermediate CA: a fresh P-256 key,
// path length 0, and a URI name constraint permitting only the cluster's
// trust domain <cluster>.<clusterset domain>. Only the root role issues
// intermediates. The validity is capped at the root's.
func (ca *CA) IssueIntermediate(cluster string, ttl time.Duration) (*CA, error) {
	if ca.intermediate {
		return nil, fmt.Errorf("the intermediate CA of %s cannot issue intermediates; use the clusterset root", ca.domain)
	}
	if err := checkLabel(cluster); err != nil {
		return nil, err
	}
	td := cluster + "." + ca.domain
	if _, err := spiffeid.TrustDomainFromString(td); err != nil {
		return nil, fmt.Errorf("trust domain of cluster %q: %w", cluster, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating the intermediate key of %s: %w", cluster, err)
	}
	notBefore, notAfter, err := ca.validity(ttl)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		Subject:                     pkix.Name{Organization: []string{"Isthmus"}, CommonName: "Isthmus intermediate CA " + td},
		NotBefore:                   notBefore,
		NotAfter:                    notAfter,
		IsCA:                        true,
		BasicConstraintsValid:       true,
		MaxPathLen:                  0,
		MaxPathLenZero:              true,
		KeyUsage:                    x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		PermittedURIDomains:         []string{td},
		PermittedDNSDomainsCritical: true,
	}
	cert, err := sign(tmpl, ca, key)
	if err != nil {
		return nil, fmt.Errorf("signing the intermediate of %s: %w", cluster, err)
	}
	return &CA{cert: cert, key: key, chain: ca.signingChain(), roots: ca.roots, domain: td, intermediate: true, clock: ca.clock}, nil
}

// validity is the window of a certificate this CA issues now for ttl,
// capped at the CA's own expiry.
func (ca *CA) validity(ttl time.Duration) (time.Time, time.Time, error) {
	if ttl <= 0 {
		return time.Time{}, time.Time{}, fmt.Errorf("certificate lifetime %v must be positive", ttl)
	}
	now := ca.clock.Now()
	if !now.Before(ca.cert.NotAfter) {
		return time.Time{}, time.Time{}, fmt.Errorf("CA %q expired at %s", ca.cert.Subject.CommonName, ca.cert.NotAfter.UTC().Format(time.RFC3339))
	}
	notAfter := now.Add(ttl)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	notBefore := now.Add(-backdate)
	if notBefore.Before(ca.cert.NotBefore) {
		notBefore = ca.cert.NotBefore
	}
	return notBefore, notAfter, nil
}

// signingChain is what a certificate this CA signs is served with after
// itself: this CA's certificate and the ones between it and the anchor.
func (ca *CA) signingChain() []*x509.Certificate {
	if contains(ca.roots, ca.cert) {
		return nil
	}
	return append([]*x509.Certificate{ca.cert}, ca.chain...)
}

// WithClock returns a copy of the CA that reads the time from c, for
// issuing at a chosen instant in tests.
func (ca *CA) WithClock(c Clock) *CA {
	cp := *ca
	cp.clock = c
	return &cp
}

// Domain is the clusterset domain for the root role and the cluster's
// trust domain for an intermediate.
func (ca *CA) Domain() string { return ca.domain }

// IsIntermediate reports whether this is a cluster's intermediate (it
// issues leaves) rather than the root role (it issues intermediates).
func (ca *CA) IsIntermediate() bool { return ca.intermediate }

// Certificate is the CA's own certificate.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// ClustersetDomain is the clusterset domain the CA belongs to.
func (ca *CA) ClustersetDomain() string {
	if ca.intermediate {
		_, parent, _ := strings.Cut(ca.domain, ".")
		return parent
	}
	return ca.domain
}

// PEM returns what LoadCA reads back: the CA's certificate and the
// certificates between it and the anchor, its private key (PKCS #8), and
// the trust bundle. Keep the key in a Secret.
func (ca *CA) PEM() (certPEM, keyPEM, bundlePEM []byte, err error) {
	keyPEM, err = encodeKey(ca.key)
	if err != nil {
		return nil, nil, nil, err
	}
	return encodeCerts(append([]*x509.Certificate{ca.cert}, ca.chain...)), keyPEM, encodeCerts(ca.roots), nil
}

// String names the CA without its key, so printing one leaks nothing.
func (ca *CA) String() string {
	role := "root"
	if ca.intermediate {
		role = "intermediate"
	}
	return fmt.Sprintf("%s CA %s (serial %x, expires %s)", role, ca.domain, ca.cert.SerialNumber, ca.cert.NotAfter.UTC().Format(time.RFC3339))
}

// GoString keeps %#v from printing the key.
func (ca *CA) GoString() string { return ca.String() }

// LogValue keeps slog from printing the key.
func (ca *CA) LogValue() slog.Value { return slog.StringValue(ca.String()) }

// sign creates a certificate from tmpl for key's public half, signed by
// parent (self-signed when parent is nil).
func sign(tmpl *x509.Certificate, parent *CA, key crypto.Signer) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("drawing a serial number: %w", err)
	}
	tmpl.SerialNumber = serial.Add(serial, big.NewInt(1))
	parentCert, signer := tmpl, key
	if parent != nil {
		parentCert, signer = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parentCert, key.Public(), signer)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

func selfSigned(c *x509.Certificate) bool {
	return c.IsCA && string(c.RawSubject) == string(c.RawIssuer) && c.CheckSignatureFrom(c) == nil
}

func contains(set []*x509.Certificate, c *x509.Certificate) bool {
	for _, s := range set {
		if s.Equal(c) {
			return true
		}
	}
	return false
}

func pool(certs []*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// permits reports whether URI domain constraints let host through, as
// RFC 5280 (section 4.2.1.10) reads them and OpenSSL and BoringSSL
// enforce them: "a.b" permits the host a.b only, ".a.b" any host below
// a.b but not a.b itself. Go's verifier is laxer ("a.b" also permits its
// subdomains), so Go accepting a chain proves nothing for Envoy.
func permits(constraints []string, host string) bool {
	for _, c := range constraints {
		switch {
		case c == "":
			return true
		case strings.HasPrefix(c, "."):
			if len(host) > len(c) && strings.HasSuffix(host, c) {
				return true
			}
		case host == c:
			return true
		}
	}
	return false
}

// checkDomain accepts a clusterset domain: lower-case DNS labels joined by
// dots, usable as the parent of SPIFFE trust domains.
func checkDomain(d string) error {
	if d == "" || len(d) > 200 {
		return fmt.Errorf("clusterset domain %q must be 1 to 200 characters", d)
	}
	for _, label := range strings.Split(d, ".") {
		if err := checkLabel(label); err != nil {
			return fmt.Errorf("clusterset domain %q: %w", d, err)
		}
	}
	return nil
}

// checkLabel accepts a DNS label as Kubernetes does (RFC 1123): what a
// cluster id is.
func checkLabel(l string) error {
	ok := l != "" && len(l) <= 63 && l[0] != '-' && l[len(l)-1] != '-'
	for i := 0; ok && i < len(l); i++ {
		c := l[i]
		ok = c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-'
	}
	if !ok {
		return fmt.Errorf("%q is not a DNS label (lower-case letters, digits and '-', at most 63, starting and ending alphanumeric)", l)
	}
	return nil
}
