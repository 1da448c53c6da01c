package tunnel

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/btree"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// Peer states. The first three come from health checks of configured
// peers; the others say why a record got no peer and no route.
const (
	StateConnecting   = "Connecting"
	StateConnected    = "Connected"
	StateError        = "Error"
	StatePending      = "Pending"
	StateInvalid      = "Invalid"
	StateCIDRConflict = "CIDRConflict"
	StateKeyConflict  = "KeyConflict"
	// StateRefused: the record claims a range no member may have (a
	// default route, a very wide prefix, or one covering a network the
	// tunnel itself needs), so it gets no peer and no route.
	StateRefused = "Refused"
)

// Local is what this cluster's own record and device say about itself.
type Local struct {
	Cluster      string
	PublicKey    wgtypes.Key
	PodCIDRs     []netip.Prefix
	ServiceCIDRs []netip.Prefix
	// Protected are ranges no peer may claim whatever it is approved for:
	// the broker's address and this node's own networks, without which
	// the tunnel's own traffic would be routed into a tunnel.
	Protected []netip.Prefix
}

// Peer is one remote cluster's gateway as the device should know it.
type Peer struct {
	Cluster  string
	Key      wgtypes.Key
	Endpoint netip.AddrPort
	// AllowedIPs are the remote pod and service CIDRs, sorted: what the
	// device accepts from the peer and what is routed to it.
	AllowedIPs []netip.Prefix
	// TunnelAddr is the remote gateway's address on its tunnel device, the
	// target of the health probe.
	TunnelAddr netip.Addr
}

// Verdict is why a remote record did not become a peer; State is empty for
// the records that did.
type Verdict struct {
	Cluster string
	State   string
	Reason  string
}

// Plan turns the broker's cluster records into the peers this cluster's
// device should have. Records are taken oldest first (creation time, then
// name), so where two remotes claim the same public key or overlapping
// CIDRs the older record keeps them and the newer one gets a conflict
// state. A remote overlapping this cluster's own CIDRs always loses: no
// route may take this cluster's own traffic away.
func Plan(local Local, records []brokerv1.Cluster) ([]Peer, []Verdict) {
	recs := slices.Clone(records)
	slices.SortFunc(recs, func(a, b brokerv1.Cluster) int {
		if c := a.CreationTimestamp.Time.Compare(b.CreationTimestamp.Time); c != 0 {
			return c
		}
		return cmp.Compare(a.Name, b.Name)
	})
	keys := map[wgtypes.Key]string{}
	var claimed claims
	for _, p := range local.PodCIDRs {
		claimed.add("", p)
	}
	for _, p := range local.ServiceCIDRs {
		claimed.add("", p)
	}
	var peers []Peer
	var verdicts []Verdict
	for _, r := range recs {
		if r.Name == local.Cluster {
			continue
		}
		v := Verdict{Cluster: r.Name}
		peer, err := parseRecord(r, local)
		if err != nil {
			v.State, v.Reason = recordState(r, err), err.Error()
			verdicts = append(verdicts, v)
			continue
		}
		if peer.Key == local.PublicKey {
			v.State, v.Reason = StateKeyConflict, "its WireGuard public key is this cluster's own; no peer and no route until it publishes its own key"
			verdicts = append(verdicts, v)
			continue
		}
		if owner, ok := keys[peer.Key]; ok {
			v.State, v.Reason = StateKeyConflict, fmt.Sprintf("its WireGuard public key is already used by cluster %s (older record wins); no peer and no route until one of them publishes a new key", owner)
			verdicts = append(verdicts, v)
			continue
		}
		keys[peer.Key] = r.Name
		var overlaps []string
		for _, p := range peer.AllowedIPs {
			for _, c := range claimed.overlapping(p) {
				who := "this cluster's own " + c.prefix.String()
				if c.cluster != "" {
					who = "cluster " + c.cluster + "'s " + c.prefix.String() + " (older record wins)"
				}
				overlaps = append(overlaps, fmt.Sprintf("%s overlaps %s", p, who))
			}
		}
		if len(overlaps) > 0 {
			v.State, v.Reason = StateCIDRConflict, strings.Join(overlaps, "; ")+"; no peer and no route until the CIDRs are made disjoint"
			verdicts = append(verdicts, v)
			continue
		}
		for _, p := range peer.AllowedIPs {
			claimed.add(r.Name, p)
		}
		peers = append(peers, peer)
		verdicts = append(verdicts, v)
	}
	return peers, verdicts
}

// claim is a CIDR taken by a cluster ("" for this one).
type claim struct {
	cluster string
	prefix  netip.Prefix
}

// claims finds overlaps in O(bits + log n) per CIDR instead of comparing
// every pair: two prefixes overlap exactly when one contains the other, so
// the containers of p are p's shorter prefixes (looked up by value) and
// the contained ones start inside p (found in address order).
type claims struct {
	exact  map[netip.Prefix]string
	sorted *btree.BTreeG[claim]
}

func (c *claims) add(cluster string, p netip.Prefix) {
	if c.exact == nil {
		c.exact = map[netip.Prefix]string{}
		c.sorted = btree.NewG(16, func(a, b claim) bool { return comparePrefix(a.prefix, b.prefix) < 0 })
	}
	if _, ok := c.exact[p]; ok {
		return
	}
	c.exact[p] = cluster
	c.sorted.ReplaceOrInsert(claim{cluster, p})
}

func (c *claims) overlapping(p netip.Prefix) []claim {
	if c.exact == nil {
		return nil
	}
	var out []claim
	for bits := 0; bits <= p.Bits(); bits++ {
		q, _ := p.Addr().Prefix(bits)
		if owner, ok := c.exact[q]; ok {
			out = append(out, claim{owner, q})
		}
	}
	c.sorted.AscendGreaterOrEqual(claim{prefix: netip.PrefixFrom(p.Addr(), 0)}, func(e claim) bool {
		if !p.Contains(e.prefix.Addr()) {
			return false
		}
		if e.prefix.Bits() > p.Bits() {
			out = append(out, e)
		}
		return true
	})
	return out
}

// recordState is the state of a record parseRecord refused.
func recordState(r brokerv1.Cluster, err error) string {
	var refused *brokerv1.ClaimError
	switch {
	case errors.As(err, &refused):
		return StateRefused
	case r.Spec.WireGuard == nil || len(r.Spec.PodCIDRs) == 0:
		return StatePending
	}
	return StateInvalid
}

// parseRecord reads a remote record's tunnel facts, rejecting what the
// device cannot use and what the record may not claim: every CIDR must
// pass brokerv1.CheckClaim's fixed rules and miss this node's protected
// ranges, and none may cover the peer's own endpoint (its
// tunnel packets would be routed into the tunnel itself).
func parseRecord(r brokerv1.Cluster, local Local) (Peer, error) {
	p := Peer{Cluster: r.Name}
	if r.Spec.WireGuard == nil {
		return p, fmt.Errorf("no WireGuard key and endpoint published yet")
	}
	key, err := wgtypes.ParseKey(r.Spec.WireGuard.PublicKey)
	if err != nil {
		return p, fmt.Errorf("public key %q: %w", r.Spec.WireGuard.PublicKey, err)
	}
	if key == (wgtypes.Key{}) {
		return p, fmt.Errorf("public key is all zeros")
	}
	p.Key = key
	ep, err := netip.ParseAddrPort(r.Spec.WireGuard.Endpoint)
	if err != nil || ep.Port() == 0 || !ep.Addr().IsValid() || ep.Addr().IsUnspecified() {
		return p, fmt.Errorf("endpoint %q is not a usable ip:port", r.Spec.WireGuard.Endpoint)
	}
	p.Endpoint = netip.AddrPortFrom(ep.Addr().Unmap(), ep.Port())
	if len(r.Spec.PodCIDRs) == 0 {
		return p, fmt.Errorf("no pod CIDRs published yet")
	}
	cidrs, err := parsePrefixes(append(slices.Clone(r.Spec.PodCIDRs), r.Spec.ServiceCIDRs...))
	if err != nil {
		return p, err
	}
	protected := append(slices.Clone(local.Protected), netip.PrefixFrom(p.Endpoint.Addr(), p.Endpoint.Addr().BitLen()))
	// The hub's allowlist (MemberPolicy) is the broker's to enforce:
	// members cannot read it. Here the fixed rules and this node's
	// protected ranges hold whatever the broker let through.
	for _, c := range cidrs {
		if err := brokerv1.CheckClaim(c, nil, protected); err != nil {
			return p, fmt.Errorf("no peer and no route: %w", err)
		}
	}
	p.AllowedIPs = cidrs
	pods, _ := parsePrefixes(r.Spec.PodCIDRs)
	p.TunnelAddr = TunnelAddress(pods[0])
	return p, nil
}

// parsePrefixes parses CIDRs into their canonical (masked) form, sorted and
// without duplicates.
func parsePrefixes(ss []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(ss))
	for _, s := range ss {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("CIDR %q: %w", s, err)
		}
		out = append(out, p.Masked())
	}
	slices.SortFunc(out, comparePrefix)
	return slices.Compact(out), nil
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}

// TunnelAddress is a cluster gateway's address on its tunnel device: the
// last address below the broadcast address of its first pod CIDR. Pod
// IPAM hands out node ranges from the bottom, so the top of the range is
// free unless the cluster fills its whole pod CIDR; the record carries no
// separate field for it.
func TunnelAddress(podCIDR netip.Prefix) netip.Addr {
	p := podCIDR.Masked()
	a := p.Addr().AsSlice()
	host := len(a)*8 - p.Bits()
	if host < 2 {
		return p.Addr()
	}
	// Set every host bit, then step back one from the broadcast.
	for i := len(a) - 1; i >= 0 && host > 0; i-- {
		n := min(host, 8)
		a[i] |= byte(1<<n - 1)
		host -= n
	}
	last, _ := netip.AddrFromSlice(a)
	return last.Prev()
}
