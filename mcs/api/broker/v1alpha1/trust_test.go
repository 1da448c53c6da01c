package v1alpha1

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func prefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ss))
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestCheckClaim(t *testing.T) {
	approved := prefixes("10.1.0.0/16", "fd00:1::/48")
	protected := prefixes("192.168.50.10/32", "172.31.0.0/24")
	tests := []struct {
		claim    string
		approved []netip.Prefix
		rule     string // "" when accepted
	}{
		{"10.1.0.0/16", approved, ""},
		{"10.1.4.0/24", approved, ""},
		{"fd00:1:0:5::/64", approved, ""},
		{"10.1.0.0/16", nil, ""}, // no allowlist known: the fixed rules only
		{"0.0.0.0/0", nil, RuleDefaultRoute},
		{"::/0", nil, RuleDefaultRoute},
		{"0.0.0.0/1", nil, RuleTooWide},
		{"10.0.0.0/7", nil, RuleTooWide},
		{"10.0.0.0/8", nil, ""},
		{"2001::/16", nil, RuleTooWide},
		{"192.0.2.0/24", approved, RuleNotApproved}, // the route hijack
		{"10.0.0.0/15", approved, RuleNotApproved},  // wider than what was approved
		{"10.1.0.0/15", approved, RuleNotApproved},  // unmasked, then too wide
		{"192.168.50.0/24", nil, RuleProtected},     // covers the broker
		{"172.31.0.128/25", nil, RuleProtected},     // inside a node network
	}
	for _, tc := range tests {
		err := CheckClaim(netip.MustParsePrefix(tc.claim), tc.approved, protected)
		var ce *ClaimError
		switch {
		case tc.rule == "" && err != nil:
			t.Errorf("CheckClaim(%s) = %v; want accepted", tc.claim, err)
		case tc.rule != "" && (!errors.As(err, &ce) || ce.Rule != tc.rule):
			t.Errorf("CheckClaim(%s) = %v; want refused by %s", tc.claim, err, tc.rule)
		}
	}
}

func TestParseClaims(t *testing.T) {
	ok, errs := ParseClaims([]string{"10.1.0.0/16", "nonsense", "0.0.0.0/0", "10.1.7.9/24"}, nil, nil)
	if want := prefixes("10.1.0.0/16", "10.1.7.0/24"); len(ok) != 2 || ok[0] != want[0] || ok[1] != want[1] {
		t.Errorf("accepted %v; want %v", ok, want)
	}
	if len(errs) != 2 {
		t.Errorf("errors %v; want one for the unparsable CIDR and one for the default route", errs)
	}
}

func TestEndpointAllowed(t *testing.T) {
	pods := prefixes("10.1.0.0/16", "fd00:1::/48")
	for addr, want := range map[string]bool{
		"10.1.2.3":         true,
		"198.51.100.7":     false, // the endpoint injection
		"::ffff:10.1.2.3":  true,
		"fd00:1::5":        true,
		"fd00:2::5":        false,
		"::ffff:192.0.2.1": false,
	} {
		if got := EndpointAllowed(netip.MustParseAddr(addr), pods); got != want {
			t.Errorf("EndpointAllowed(%s) = %v; want %v", addr, got, want)
		}
	}
}

func TestEffectiveExportTime(t *testing.T) {
	joined := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	early := metav1.NewTime(time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC))
	later := metav1.NewTime(joined.Add(time.Hour))
	if got := EffectiveExportTime(early, joined); !got.Time.Equal(joined) {
		t.Errorf("a claim from before the member joined became %v; want the join time %v", got, joined)
	}
	if got := EffectiveExportTime(later, joined); !got.Time.Equal(later.Time) {
		t.Errorf("a claim after the join became %v; want it kept", got)
	}
	if got := EffectiveExportTime(early, time.Time{}); !got.Time.Equal(early.Time) {
		t.Errorf("with no record seen the claim became %v; want it kept", got)
	}
}

// FuzzCheckClaim: whatever a member claims, an accepted range is never a
// default route, never wider than the minimum, never over a protected
// range and always inside an approved one.
func FuzzCheckClaim(f *testing.F) {
	for _, s := range []string{"10.1.0.0/16", "0.0.0.0/0", "::/0", "192.168.50.0/24", "fd00:1::/48", "10.1.0.0/15", "2000::/3"} {
		f.Add(s)
	}
	approved := prefixes("10.1.0.0/16", "fd00:1::/48")
	protected := prefixes("192.168.50.10/32")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return
		}
		for _, ap := range [][]netip.Prefix{nil, approved} {
			if CheckClaim(p, ap, protected) != nil {
				continue
			}
			m := p.Masked()
			min := MinIPv4PrefixBits
			if m.Addr().Is6() {
				min = MinIPv6PrefixBits
			}
			if m.Bits() < min || m.Overlaps(protected[0]) || (ap != nil && !coveredBy(m, ap)) {
				t.Errorf("CheckClaim accepted %s (approved %v)", s, ap)
			}
		}
	})
}
