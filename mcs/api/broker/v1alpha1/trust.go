package v1alpha1

import (
	"fmt"
	"net/netip"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// What a member may claim in its own records. The broker's admission
// policy keeps each member to its own records, but what a member writes in
// them is read by every other member: a pod CIDR becomes a route into its
// tunnel, an endpoint address a destination for every importer's clients,
// an export time the winner of every conflict. Every reader checks them
// with these rules, so a hostile or broken member can take no one else's
// traffic even on a broker whose admission policy is older than the rules.

// The shortest prefixes a member may claim: anything wider is a large part
// of the address space, never one cluster's pods or Services.
const (
	MinIPv4PrefixBits = 8
	MinIPv6PrefixBits = 32
)

// +kubebuilder:object:generate=false

// ClaimError says why a claimed range was refused. Rule names the rule for
// conditions, Events and metrics.
type ClaimError struct {
	Prefix netip.Prefix
	Rule   string
	Detail string
}

func (e *ClaimError) Error() string {
	return fmt.Sprintf("%s refused (%s): %s", e.Prefix, e.Rule, e.Detail)
}

// The rules a claim can break.
const (
	RuleDefaultRoute = "DefaultRoute"
	RuleTooWide      = "PrefixTooWide"
	RuleNotApproved  = "NotApproved"
	RuleProtected    = "CoversProtected"
)

// CheckClaim reports whether a member may claim p as one of its pod or
// Service ranges. approved is the hub's allowlist for the member (nil: no
// allowlist is known, so only the fixed rules apply); protected are ranges
// no member may cover whatever its allowlist says: the broker's address,
// the peers' tunnel endpoints, the reader's own node networks.
func CheckClaim(p netip.Prefix, approved, protected []netip.Prefix) error {
	p = p.Masked()
	switch {
	case p.Bits() == 0:
		return &ClaimError{p, RuleDefaultRoute, "a default route is never one cluster's range"}
	case p.Addr().Is4() && p.Bits() < MinIPv4PrefixBits:
		return &ClaimError{p, RuleTooWide, fmt.Sprintf("IPv4 ranges must be /%d or longer", MinIPv4PrefixBits)}
	case p.Addr().Is6() && p.Bits() < MinIPv6PrefixBits:
		return &ClaimError{p, RuleTooWide, fmt.Sprintf("IPv6 ranges must be /%d or longer", MinIPv6PrefixBits)}
	}
	for _, q := range protected {
		if p.Overlaps(q) {
			return &ClaimError{p, RuleProtected, fmt.Sprintf("it overlaps %s, which must never be routed into a tunnel", q)}
		}
	}
	if approved != nil && !coveredBy(p, approved) {
		return &ClaimError{p, RuleNotApproved, fmt.Sprintf("it is outside the ranges the hub approved for the member %v", approved)}
	}
	return nil
}

// coveredBy reports whether one of outer contains all of p.
func coveredBy(p netip.Prefix, outer []netip.Prefix) bool {
	for _, o := range outer {
		if o.Bits() <= p.Bits() && o.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// ParseClaims parses a record's CIDR strings, keeping those CheckClaim
// accepts and returning an error for each refused or unparsable one.
func ParseClaims(cidrs []string, approved, protected []netip.Prefix) ([]netip.Prefix, []error) {
	var ok []netip.Prefix
	var errs []error
	for _, s := range cidrs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("CIDR %q: %w", s, err))
			continue
		}
		if err := CheckClaim(p, approved, protected); err != nil {
			errs = append(errs, err)
			continue
		}
		ok = append(ok, p.Masked())
	}
	return ok, errs
}

// EndpointAllowed reports whether an address a member lists in one of its
// broker EndpointSlices lies inside the pod ranges it may claim. An address
// outside them would send importers' clients out of the clusterset, in
// clear.
func EndpointAllowed(addr netip.Addr, podCIDRs []netip.Prefix) bool {
	addr = addr.Unmap()
	for _, p := range podCIDRs {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// EffectiveExportTime is the export time a merge may use: the member's
// claimed exportCreationTimestamp, but no earlier than the server-set
// creation of the member's own Cluster record. The oldest export wins
// every conflict, so a claimed time from before the member joined would
// let it win every service it exports; the apiserver's timestamp cannot be
// forged. A zero clusterCreated (no record seen) leaves the claim as it is.
func EffectiveExportTime(claimed metav1.Time, clusterCreated time.Time) metav1.Time {
	if !clusterCreated.IsZero() && claimed.Time.Before(clusterCreated) {
		return metav1.NewTime(clusterCreated)
	}
	return claimed
}
