package tunnel

import (
	"net/netip"
	"slices"
	"time"

	"github.com/google/btree"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// planner holds the plan of every remote record and updates it for one
// changed record in time that does not depend on how many records there
// are, as long as the change touches no other record's CIDRs or key. When
// it does, conflicts can cascade (a record leaving frees a newer one's
// CIDRs, which may now block a third), so the planner re-plans everything
// with Plan; such changes are rare and Plan is O(n log n).
//
// Its result always equals Plan over the same records (tested).
type planner struct {
	local    Local
	inputs   map[string]planInput
	records  map[string]brokerv1.Cluster
	parsed   map[string]Peer // records that parse, accepted or not
	byKey    map[wgtypes.Key]map[string]bool
	cidrs    prefixIndex
	peers    map[string]Peer
	verdicts map[string]Verdict
}

// planInput is what Plan reads of a record; a record event that changes
// none of it (a status write, a label) changes no plan.
type planInput struct {
	created       time.Time
	pub, endpoint string
	hasWireGuard  bool
	pods, svcs    string
}

func inputOf(r *brokerv1.Cluster) planInput {
	in := planInput{created: r.CreationTimestamp.Time, pods: joinStrings(r.Spec.PodCIDRs), svcs: joinStrings(r.Spec.ServiceCIDRs)}
	if r.Spec.WireGuard != nil {
		in.hasWireGuard, in.pub, in.endpoint = true, r.Spec.WireGuard.PublicKey, r.Spec.WireGuard.Endpoint
	}
	return in
}

func joinStrings(ss []string) string {
	n := 0
	for _, s := range ss {
		n += len(s) + 1
	}
	b := make([]byte, 0, n)
	for _, s := range ss {
		b = append(append(b, s...), 0)
	}
	return string(b)
}

// reset plans every record from scratch (self's record among them is
// skipped, as Plan does).
func (p *planner) reset(local Local, records []brokerv1.Cluster) {
	*p = planner{
		local: local, inputs: map[string]planInput{}, records: map[string]brokerv1.Cluster{}, parsed: map[string]Peer{},
		byKey: map[wgtypes.Key]map[string]bool{}, peers: map[string]Peer{}, verdicts: map[string]Verdict{},
	}
	for i := range records {
		r := &records[i]
		if r.Name == local.Cluster {
			continue
		}
		p.index(r)
	}
	peers, verdicts := Plan(local, records)
	for _, pe := range peers {
		p.peers[pe.Cluster] = pe
	}
	for _, v := range verdicts {
		p.verdicts[v.Cluster] = v
	}
}

func (p *planner) index(r *brokerv1.Cluster) {
	p.inputs[r.Name] = inputOf(r)
	p.records[r.Name] = *r
	peer, err := parseRecord(*r, p.local)
	if err != nil {
		return
	}
	p.parsed[r.Name] = peer
	if p.byKey[peer.Key] == nil {
		p.byKey[peer.Key] = map[string]bool{}
	}
	p.byKey[peer.Key][r.Name] = true
	for _, c := range peer.AllowedIPs {
		p.cidrs.add(r.Name, c)
	}
}

func (p *planner) unindex(name string) {
	if peer, ok := p.parsed[name]; ok {
		delete(p.byKey[peer.Key], name)
		if len(p.byKey[peer.Key]) == 0 {
			delete(p.byKey, peer.Key)
		}
		for _, c := range peer.AllowedIPs {
			p.cidrs.remove(name, c)
		}
	}
	delete(p.parsed, name)
	delete(p.inputs, name)
	delete(p.records, name)
}

// touchesOthers says whether the record name's parsed key or CIDRs are
// shared with, or overlap, another record's.
func (p *planner) touchesOthers(name string) bool {
	peer, ok := p.parsed[name]
	if !ok {
		return false
	}
	for other := range p.byKey[peer.Key] {
		if other != name {
			return true
		}
	}
	for _, c := range peer.AllowedIPs {
		if p.cidrs.overlapsOther(c, name) {
			return true
		}
	}
	return false
}

// update brings the plan in step with one record: r is its new content,
// nil when it was deleted. It returns the clusters whose peer or verdict
// changed. Self's record is not planned; the caller re-plans everything
// when this cluster's own CIDRs or key change.
func (p *planner) update(name string, r *brokerv1.Cluster) []string {
	if name == p.local.Cluster {
		return nil
	}
	old, had := p.inputs[name]
	if r != nil && had && inputOf(r) == old {
		return nil
	}
	cascade := had && p.touchesOthers(name)
	p.unindex(name)
	if r != nil {
		p.index(r)
		cascade = cascade || p.touchesOthers(name)
	}
	if cascade {
		return p.replan()
	}
	oldPeer, hadPeer := p.peers[name]
	oldVerdict := p.verdicts[name]
	delete(p.peers, name)
	delete(p.verdicts, name)
	if r != nil {
		// Alone in its CIDRs and key, the record's fate depends only on
		// this cluster's own: exactly what Plan would decide for it.
		peers, verdicts := Plan(p.local, []brokerv1.Cluster{*r})
		for _, pe := range peers {
			p.peers[name] = pe
		}
		for _, v := range verdicts {
			p.verdicts[name] = v
		}
	}
	newPeer, hasPeer := p.peers[name]
	if hadPeer == hasPeer && samePeer(oldPeer, newPeer) && p.verdicts[name] == oldVerdict {
		return nil
	}
	return []string{name}
}

// replan runs Plan over every record and returns the clusters whose peer
// or verdict changed.
func (p *planner) replan() []string {
	records := make([]brokerv1.Cluster, 0, len(p.records))
	for _, r := range p.records {
		records = append(records, r)
	}
	oldPeers, oldVerdicts := p.peers, p.verdicts
	p.peers, p.verdicts = map[string]Peer{}, map[string]Verdict{}
	peers, verdicts := Plan(p.local, records)
	for _, pe := range peers {
		p.peers[pe.Cluster] = pe
	}
	for _, v := range verdicts {
		p.verdicts[v.Cluster] = v
	}
	var changed []string
	for c := range oldVerdicts {
		if _, ok := p.verdicts[c]; !ok {
			changed = append(changed, c)
		}
	}
	for c, v := range p.verdicts {
		op, had := oldPeers[c]
		np, has := p.peers[c]
		if oldVerdicts[c] != v || had != has || !samePeer(op, np) {
			changed = append(changed, c)
		}
	}
	slices.Sort(changed)
	return changed
}

func samePeer(a, b Peer) bool {
	return a.Cluster == b.Cluster && a.Key == b.Key && a.Endpoint == b.Endpoint && a.TunnelAddr == b.TunnelAddr &&
		slices.Equal(a.AllowedIPs, b.AllowedIPs)
}

// prefixIndex finds, among every record's CIDRs, those overlapping a
// prefix in O(bits + log n), as claims does for the accepted ones; here
// several records may hold the same prefix.
type prefixIndex struct {
	exact  map[netip.Prefix]map[string]bool
	sorted *btree.BTreeG[netip.Prefix]
}

func (x *prefixIndex) add(name string, p netip.Prefix) {
	if x.exact == nil {
		x.exact = map[netip.Prefix]map[string]bool{}
		x.sorted = btree.NewG(16, func(a, b netip.Prefix) bool { return comparePrefix(a, b) < 0 })
	}
	if x.exact[p] == nil {
		x.exact[p] = map[string]bool{}
		x.sorted.ReplaceOrInsert(p)
	}
	x.exact[p][name] = true
}

func (x *prefixIndex) remove(name string, p netip.Prefix) {
	owners := x.exact[p]
	delete(owners, name)
	if owners != nil && len(owners) == 0 {
		delete(x.exact, p)
		x.sorted.Delete(p)
	}
}

// overlapsOther says whether a record other than name holds a CIDR
// overlapping p.
func (x *prefixIndex) overlapsOther(p netip.Prefix, name string) bool {
	if x.exact == nil {
		return false
	}
	other := func(q netip.Prefix) bool {
		for o := range x.exact[q] {
			if o != name {
				return true
			}
		}
		return false
	}
	for bits := 0; bits <= p.Bits(); bits++ {
		q, _ := p.Addr().Prefix(bits)
		if other(q) {
			return true
		}
	}
	found := false
	x.sorted.AscendGreaterOrEqual(netip.PrefixFrom(p.Addr(), 0), func(q netip.Prefix) bool {
		if !p.Contains(q.Addr()) {
			return false
		}
		if q.Bits() > p.Bits() && other(q) {
			found = true
			return false
		}
		return true
	})
	return found
}
