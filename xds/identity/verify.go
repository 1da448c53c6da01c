package identity

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// TrustBundle is the clusterset's roots, offered as the bundle of every
// cluster's trust domain (<cluster>.<clusterset domain>) and of no other.
// It is a go-spiffe x509bundle.Source.
type TrustBundle struct {
	clustersetDomain string
	roots            []*x509.Certificate
}

// NewTrustBundle reads the clusterset's roots (PEM, one or more: during a
// root rotation the old and the new).
func NewTrustBundle(clustersetDomain string, rootsPEM []byte) (*TrustBundle, error) {
	if err := checkDomain(clustersetDomain); err != nil {
		return nil, err
	}
	roots, err := parseCerts("trust bundle", rootsPEM)
	if err != nil {
		return nil, err
	}
	return &TrustBundle{clustersetDomain: clustersetDomain, roots: roots}, nil
}

// TrustBundle is the bundle that verifies what this CA issues.
func (ca *CA) TrustBundle() *TrustBundle {
	return &TrustBundle{clustersetDomain: ca.ClustersetDomain(), roots: ca.roots}
}

// GetX509BundleForTrustDomain returns the roots for a cluster's trust
// domain, and an error for any trust domain outside the clusterset.
func (b *TrustBundle) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	cluster, parent, ok := strings.Cut(td.Name(), ".")
	if !ok || parent != b.clustersetDomain || checkLabel(cluster) != nil {
		return nil, fmt.Errorf("trust domain %s is not a cluster of the clusterset %s", td, b.clustersetDomain)
	}
	return x509bundle.FromX509Authorities(td, b.roots), nil
}

// Verify checks a presented chain (leaf first) at time now: an
// X.509-SVID of the clusterset, within every CA's name constraints, and,
// when allowed ids are given, one of them. It returns the peer's id.
func (b *TrustBundle) Verify(chain []*x509.Certificate, now time.Time, allowed ...string) (spiffeid.ID, error) {
	ids, err := parseIDs(allowed)
	if err != nil {
		return spiffeid.ID{}, err
	}
	id, _, err := x509svid.Verify(chain, b, x509svid.WithTime(now))
	if err != nil {
		return id, err
	}
	if err := authorizer(ids)(id, nil); err != nil {
		return id, err
	}
	return id, nil
}

// ServerConfig is a TLS 1.3 server configuration that presents svid (a
// Leaf, or a Rotator to follow rotations), requires a client X.509-SVID
// from the clusterset and, when allowed ids are given, one of them.
func ServerConfig(svid x509svid.Source, bundle *TrustBundle, allowed ...string) (*tls.Config, error) {
	ids, err := parseIDs(allowed)
	if err != nil {
		return nil, err
	}
	c := tlsconfig.MTLSServerConfig(svid, bundle, authorizer(ids))
	c.MinVersion = tls.VersionTLS13
	return c, nil
}

// ClientConfig is a TLS 1.3 client configuration that presents svid and
// accepts only a server presenting one of the allowed ids: a client pins
// whom it talks to.
func ClientConfig(svid x509svid.Source, bundle *TrustBundle, allowed ...string) (*tls.Config, error) {
	if len(allowed) == 0 {
		return nil, errors.New("a client must pin the server's SPIFFE id: give at least one")
	}
	ids, err := parseIDs(allowed)
	if err != nil {
		return nil, err
	}
	c := tlsconfig.MTLSClientConfig(svid, bundle, authorizer(ids))
	c.MinVersion = tls.VersionTLS13
	return c, nil
}

func parseIDs(allowed []string) ([]spiffeid.ID, error) {
	ids := make([]spiffeid.ID, 0, len(allowed))
	for _, a := range allowed {
		id, err := spiffeid.FromString(a)
		if err != nil {
			return nil, fmt.Errorf("allowed SPIFFE id %q: %w", a, err)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// authorizer accepts any id of the clusterset (the bundle refuses other
// trust domains) when none is pinned, else only the pinned ones.
func authorizer(ids []spiffeid.ID) tlsconfig.Authorizer {
	if len(ids) == 0 {
		return tlsconfig.AuthorizeAny()
	}
	return tlsconfig.AuthorizeOneOf(ids...)
}
