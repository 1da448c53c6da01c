package dnsserver

import (
	"fmt"
	"strings"

	"github.com/miekg/dns"
)

// Defaults for Config's zero values.
const (
	DefaultZone       = "clusterset.local."
	DefaultTTL        = 5
	DefaultMaxUDPSize = 1232
	// DNSVersion is the MCS DNS specification's schema version that
	// dns-version.<zone> TXT announces.
	DNSVersion = "1.0.0"
	// dnsVersionTTL is the spec's example TTL for dns-version: it never
	// changes while the server runs.
	dnsVersionTTL = 28800
	// maxRotations bounds how many pre-packed subsets a large answer keeps
	// per size class.
	maxRotations = 64
)

// Config is what the index is built with. Zero values take the defaults.
type Config struct {
	// Zone is the clusterset zone, clusterset.local. unless configured.
	Zone string
	// ClusterZone, when set, enables the opt-in per-cluster form
	// <svc>.<ns>.svc.<clusterid>.<ClusterZone>: the ready endpoints one
	// cluster's EndpointSlices list. It is a separate zone so that Zone
	// stays exactly the MCS specification (which reserves
	// <clusterid>.<svc>.<ns>.svc.<zone>).
	ClusterZone string
	// TTL of every answer and the SOA minimum (negative-caching TTL), in
	// seconds, 0–3600.
	TTL uint32
	// MaxUDPSize is the largest UDP response sent, whatever larger size a
	// client advertises, and the size advertised in our OPT record.
	// 512–65535; default 1232 (the DNS flag day 2020 value, which avoids
	// IP fragmentation).
	MaxUDPSize int
}

// withDefaults returns c with defaults filled in and names canonical, or
// an error naming the bad field.
func (c Config) withDefaults() (Config, error) {
	if c.Zone == "" {
		c.Zone = DefaultZone
	}
	if c.TTL == 0 {
		c.TTL = DefaultTTL
	}
	if c.MaxUDPSize == 0 {
		c.MaxUDPSize = DefaultMaxUDPSize
	}
	if c.TTL > 3600 {
		return c, fmt.Errorf("ttl %d: must be 1–3600 seconds", c.TTL)
	}
	if c.MaxUDPSize < 512 || c.MaxUDPSize > 65535 {
		return c, fmt.Errorf("max UDP size %d: must be 512–65535", c.MaxUDPSize)
	}
	var err error
	if c.Zone, err = canonicalZone(c.Zone); err != nil {
		return c, fmt.Errorf("zone: %w", err)
	}
	if c.ClusterZone != "" {
		if c.ClusterZone, err = canonicalZone(c.ClusterZone); err != nil {
			return c, fmt.Errorf("cluster zone: %w", err)
		}
		if dns.IsSubDomain(c.Zone, c.ClusterZone) || dns.IsSubDomain(c.ClusterZone, c.Zone) {
			return c, fmt.Errorf("cluster zone %s must not overlap zone %s", c.ClusterZone, c.Zone)
		}
	}
	return c, nil
}

func canonicalZone(z string) (string, error) {
	z = strings.ToLower(dns.Fqdn(z))
	if z == "." {
		return "", fmt.Errorf("the root zone cannot be served")
	}
	if _, ok := dns.IsDomainName(z); !ok {
		return "", fmt.Errorf("%q is not a domain name", z)
	}
	buf := make([]byte, 256)
	if _, err := dns.PackDomainName(z, buf, 0, nil, false); err != nil {
		return "", fmt.Errorf("%q: %w", z, err)
	}
	return z, nil
}
