package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Leaf is an X.509-SVID: one SPIFFE id, its key, and the chain to serve.
// Printing or logging a Leaf shows its id and validity, never its key.
type Leaf struct {
	ID spiffeid.ID
	// CertChainPEM is the leaf followed by the intermediate (and any
	// certificates up to the anchor): what a server or client presents.
	CertChainPEM []byte
	// KeyPEM is the leaf's PKCS #8 private key.
	KeyPEM []byte
	// BundlePEM is the trust bundle (the clusterset's roots) to validate
	// peers with.
	BundlePEM []byte
	NotBefore time.Time
	NotAfter  time.Time
	// Certificate is the same chain and key for crypto/tls.
	Certificate tls.Certificate

	certs []*x509.Certificate
	key   crypto.Signer
}

// IssueLeaf issues an X.509-SVID for spiffeID, which must be in this
// intermediate's trust domain: a fresh P-256 key, exactly one URI SAN,
// digital signature, serverAuth and clientAuth, valid for ttl (capped at
// the intermediate's expiry).
func (ca *CA) IssueLeaf(spiffeID string, ttl time.Duration) (*Leaf, error) {
	return ca.issue(spiffeID, nil, ttl)
}

// IssueServing is IssueLeaf with DNS names besides the SPIFFE id: a
// server's certificate for clients that verify a host name (gRPC's and
// Envoy's xDS clients check the name they dialled). Our roots and
// intermediates constrain URIs only, so any DNS name verifies.
func (ca *CA) IssueServing(spiffeID string, dnsNames []string, ttl time.Duration) (*Leaf, error) {
	if len(dnsNames) == 0 {
		return nil, fmt.Errorf("a serving certificate for %s needs a DNS name", spiffeID)
	}
	return ca.issue(spiffeID, dnsNames, ttl)
}

func (ca *CA) issue(spiffeID string, dnsNames []string, ttl time.Duration) (*Leaf, error) {
	id, err := spiffeid.FromString(spiffeID)
	if err != nil {
		return nil, fmt.Errorf("SPIFFE id %q: %w", spiffeID, err)
	}
	if !ca.intermediate {
		return nil, fmt.Errorf("the clusterset root issues intermediates only; issue %s with the intermediate of its cluster", id)
	}
	// Go's verifier would reject such a leaf for the name constraint; say
	// it here, before a certificate exists, in words an operator can act on.
	if td := id.TrustDomain().Name(); td != ca.domain {
		return nil, fmt.Errorf("refusing to issue %s: its trust domain %s is not this CA's %s (a cluster's CA signs only its own cluster's identities)", id, td, ca.domain)
	}
	if id.Path() == "" {
		return nil, fmt.Errorf("refusing to issue %s: a workload id needs a path (Istio form /ns/<ns>/sa/<sa>)", id)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating the key of %s: %w", id, err)
	}
	notBefore, notAfter, err := ca.validity(ttl)
	if err != nil {
		return nil, fmt.Errorf("issuing %s: %w", id, err)
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{Organization: []string{"Isthmus"}},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:                  []*url.URL{id.URL()},
		DNSNames:              dnsNames,
	}
	cert, err := sign(tmpl, ca, key)
	if err != nil {
		return nil, fmt.Errorf("signing %s: %w", id, err)
	}
	return newLeaf(id, append([]*x509.Certificate{cert}, ca.signingChain()...), key, ca.roots)
}

func newLeaf(id spiffeid.ID, certs []*x509.Certificate, key crypto.Signer, roots []*x509.Certificate) (*Leaf, error) {
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	l := &Leaf{
		ID: id, CertChainPEM: encodeCerts(certs), KeyPEM: keyPEM, BundlePEM: encodeCerts(roots),
		NotBefore: certs[0].NotBefore, NotAfter: certs[0].NotAfter,
		Certificate: tls.Certificate{PrivateKey: key, Leaf: certs[0]},
		certs:       certs, key: key,
	}
	for _, c := range certs {
		l.Certificate.Certificate = append(l.Certificate.Certificate, c.Raw)
	}
	return l, nil
}

// GetX509SVID makes a Leaf an x509svid.Source for go-spiffe's tlsconfig.
func (l *Leaf) GetX509SVID() (*x509svid.SVID, error) {
	return &x509svid.SVID{ID: l.ID, Certificates: l.certs, PrivateKey: l.key}, nil
}

// Serial is the leaf certificate's serial number in hex, for logs.
func (l *Leaf) Serial() string { return fmt.Sprintf("%x", l.certs[0].SerialNumber) }

// String shows the id and validity, never the key.
func (l *Leaf) String() string {
	return fmt.Sprintf("X.509-SVID %s (serial %s, valid %s to %s)", l.ID, l.Serial(),
		l.NotBefore.UTC().Format(time.RFC3339), l.NotAfter.UTC().Format(time.RFC3339))
}

// GoString keeps %#v from printing the key.
func (l *Leaf) GoString() string { return l.String() }

// LogValue keeps slog from printing the key.
func (l *Leaf) LogValue() slog.Value {
	return slog.GroupValue(slog.String("id", l.ID.String()), slog.String("serial", l.Serial()), slog.Time("not_after", l.NotAfter))
}

// MarshalJSON shows what String shows, so a JSON dump (a debug endpoint)
// cannot carry the key.
func (l *Leaf) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		ID        string    `json:"id"`
		Serial    string    `json:"serial"`
		NotBefore time.Time `json:"notBefore"`
		NotAfter  time.Time `json:"notAfter"`
	}{l.ID.String(), l.Serial(), l.NotBefore, l.NotAfter})
}

// File names WriteFiles writes, for gRPC's file_watcher certificate
// provider (certificate_file, private_key_file, ca_certificate_file).
const (
	CertFile = "tls.crt"
	KeyFile  = "tls.key"
	CAFile   = "ca.crt"
)

// WriteFiles writes the chain, key and bundle into dir (CertFile, KeyFile,
// CAFile), each atomically: a reader sees the old file or the new one,
// never a partial one. The key is 0600. All three are written and synced
// under temporary names first and then renamed back to back (bundle, chain,
// key), so a reader that pairs files from two generations can do so only in
// the microseconds between two renames.
func (l *Leaf) WriteFiles(dir string) error {
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{CAFile, l.BundlePEM, 0o644},
		{CertFile, l.CertChainPEM, 0o644},
		{KeyFile, l.KeyPEM, 0o600},
	}
	tmps := make([]string, 0, len(files))
	defer func() {
		for _, t := range tmps {
			os.Remove(t) // after a successful rename this finds nothing
		}
	}()
	for _, f := range files {
		tmp, err := writeTemp(dir, f.name, f.data, f.mode)
		if err != nil {
			return fmt.Errorf("writing %s of %s: %w", f.name, l.ID, err)
		}
		tmps = append(tmps, tmp)
	}
	for i, f := range files {
		if err := os.Rename(tmps[i], filepath.Join(dir, f.name)); err != nil {
			return fmt.Errorf("replacing %s of %s: %w", f.name, l.ID, err)
		}
	}
	// Sync the directory so the renames survive a crash.
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	return nil
}

// writeTemp writes data to a new temporary file in dir with mode (set
// before any byte is written) and syncs it.
func writeTemp(dir, name string, data []byte, mode os.FileMode) (string, error) {
	tmp, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return "", err
	}
	err = tmp.Chmod(mode)
	if err == nil {
		_, err = tmp.Write(data)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp.Name())
		return "", err
	}
	return tmp.Name(), nil
}
