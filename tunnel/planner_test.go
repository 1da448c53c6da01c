package tunnel

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// TestPlannerMatchesPlan changes random records one at a time, in a CIDR
// space small enough that overlaps, shared keys, self-conflicts and
// broken records are common, and checks after every change that the
// incremental plan equals Plan over all records, and that the clusters it
// reports as changed are exactly those whose peer or verdict changed.
func TestPlannerMatchesPlan(t *testing.T) {
	self := key(t)
	keys := []wgtypes.Key{self, key(t), key(t), key(t), key(t), key(t), key(t), key(t)}
	local := Local{Cluster: "self", PublicKey: self, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}}
	cidrs := []string{"10.0.1.0/24", "10.1.0.0/16", "10.1.0.0/24", "10.1.1.0/24", "10.2.0.0/16", "10.3.0.0/16", "10.3.128.0/17",
		"10.4.0.0/16", "10.5.0.0/16", "10.6.0.0/16", "10.7.0.0/16", "fd00:1::/48", "fd00::/16", "bogus"}
	for seed := range uint64(40) {
		rng := rand.New(rand.NewPCG(seed, 7))
		var p planner
		all := map[string]brokerv1.Cluster{}
		list := func() []brokerv1.Cluster {
			var out []brokerv1.Cluster
			for _, r := range all {
				out = append(out, r)
			}
			return out
		}
		p.reset(local, list())
		for step := range 200 {
			name := fmt.Sprintf("c%d", rng.IntN(12))
			before := snapshot(&p)
			var r *brokerv1.Cluster
			if rng.IntN(5) == 0 {
				delete(all, name)
			} else {
				pub := keys[rng.IntN(len(keys))].String()
				switch rng.IntN(12) {
				case 0:
					pub = ""
				case 1:
					pub = "not-a-key"
				}
				var pods []string
				for range rng.IntN(3) {
					pods = append(pods, cidrs[rng.IntN(len(cidrs))])
				}
				age := rng.IntN(4) // ties are broken by name
				c := rec(name, age, pub, fmt.Sprintf("192.0.2.%d:51820", rng.IntN(3)+1), pods, cidrs[rng.IntN(len(cidrs))])
				if old, ok := all[name]; ok && rng.IntN(3) > 0 {
					c.CreationTimestamp = old.CreationTimestamp // most updates keep the object
				}
				all[name] = c
				r = &c
			}
			changed := p.update(name, r)
			wantPeers, wantVerdicts := Plan(local, list())
			got := snapshot(&p)
			want := planState{peers: map[string]Peer{}, verdicts: map[string]Verdict{}}
			for _, pe := range wantPeers {
				want.peers[pe.Cluster] = pe
			}
			for _, v := range wantVerdicts {
				want.verdicts[v.Cluster] = v
			}
			if diff := got.diff(want); diff != "" {
				t.Fatalf("seed %d step %d (%s): incremental plan differs from Plan: %s", seed, step, name, diff)
			}
			var wantChanged []string
			for c := range unionKeys(before.verdicts, got.verdicts) {
				if before.verdicts[c] != got.verdicts[c] || !samePeerOK(before.peers, got.peers, c) {
					wantChanged = append(wantChanged, c)
				}
			}
			slices.Sort(wantChanged)
			slices.Sort(changed)
			if !slices.Equal(changed, wantChanged) {
				t.Fatalf("seed %d step %d (%s): reported changed %v, want %v", seed, step, name, changed, wantChanged)
			}
		}
	}
}

type planState struct {
	peers    map[string]Peer
	verdicts map[string]Verdict
}

func snapshot(p *planner) planState {
	s := planState{peers: map[string]Peer{}, verdicts: map[string]Verdict{}}
	for k, v := range p.peers {
		s.peers[k] = v
	}
	for k, v := range p.verdicts {
		s.verdicts[k] = v
	}
	return s
}

func (s planState) diff(o planState) string {
	for c := range unionKeys(s.verdicts, o.verdicts) {
		if s.verdicts[c] != o.verdicts[c] {
			return fmt.Sprintf("%s: verdict %+v, want %+v", c, s.verdicts[c], o.verdicts[c])
		}
		if !samePeerOK(s.peers, o.peers, c) {
			return fmt.Sprintf("%s: peer %+v, want %+v", c, s.peers[c], o.peers[c])
		}
	}
	return ""
}

func samePeerOK(a, b map[string]Peer, c string) bool {
	pa, oka := a[c]
	pb, okb := b[c]
	return oka == okb && samePeer(pa, pb)
}

func unionKeys[V any](a, b map[string]V) map[string]bool {
	out := map[string]bool{}
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}

// TestPlannerIgnoresIrrelevantChanges: a record event that changes none
// of what Plan reads (a status write, a label) changes nothing.
func TestPlannerIgnoresIrrelevantChanges(t *testing.T) {
	var p planner
	b := rec("b", 1, key(t).String(), "192.0.2.2:51820", []string{"10.2.0.0/16"})
	p.reset(Local{Cluster: "a"}, []brokerv1.Cluster{b})
	b.Status.Conditions = append(b.Status.Conditions, metaCondition("Heartbeat"))
	b.Labels = map[string]string{"x": "y"}
	if changed := p.update("b", &b); len(changed) != 0 {
		t.Errorf("a status change re-planned %v", changed)
	}
	b.Spec.ServiceCIDRs = []string{"10.92.0.0/16"}
	if changed := p.update("b", &b); !slices.Equal(changed, []string{"b"}) {
		t.Errorf("a CIDR change reported %v, want [b]", changed)
	}
}

// BenchmarkPlannerUpdate is the planning cost of one changed record among
// n: it should not grow with n.
func BenchmarkPlannerUpdate(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			records := disjointRecords(b, n)
			var p planner
			p.reset(Local{Cluster: "self"}, records)
			r := records[n/2]
			alt := r
			alt.Spec.ServiceCIDRs = []string{"192.168.255.0/24"}
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				if i%2 == 0 {
					p.update(r.Name, &alt)
				} else {
					p.update(r.Name, &r)
				}
			}
		})
	}
}

func metaCondition(typ string) metav1.Condition {
	return metav1.Condition{Type: typ, Status: metav1.ConditionTrue, Reason: "Test"}
}
