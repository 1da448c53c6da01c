package tunnel

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

func key(t testing.TB) wgtypes.Key {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey()
}

var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func rec(name string, age int, pub, endpoint string, pods []string, svcs ...string) brokerv1.Cluster {
	c := brokerv1.Cluster{
		ObjectMeta: metav1.ObjectMeta{Name: name, CreationTimestamp: metav1.NewTime(epoch.Add(time.Duration(age) * time.Minute))},
		Spec:       brokerv1.ClusterSpec{ClusterID: name, PodCIDRs: pods, ServiceCIDRs: svcs},
	}
	if pub != "" || endpoint != "" {
		c.Spec.WireGuard = &brokerv1.WireGuardPeer{PublicKey: pub, Endpoint: endpoint}
	}
	return c
}

func TestPlan(t *testing.T) {
	self, kb, kc := key(t), key(t), key(t)
	local := Local{Cluster: "a", PublicKey: self,
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}, ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.91.0.0/16")}}
	tests := []struct {
		name    string
		records []brokerv1.Cluster
		peers   []string          // clusters that become peers, in order
		states  map[string]string // cluster -> state, for those that do not
		reasons map[string]string // cluster -> a part of its reason
	}{
		{
			name: "two remotes and self",
			records: []brokerv1.Cluster{
				rec("a", 0, self.String(), "192.0.2.1:51820", []string{"10.1.0.0/16"}),
				rec("b", 1, kb.String(), "192.0.2.2:51820", []string{"10.2.0.0/16"}, "10.92.0.0/16"),
				rec("c", 2, kc.String(), "[2001:db8::3]:51820", []string{"10.3.0.0/16", "fd00:3::/48"}),
			},
			peers: []string{"b", "c"},
		},
		{
			name:    "record without a key yet is pending",
			records: []brokerv1.Cluster{rec("b", 1, "", "", []string{"10.2.0.0/16"})},
			states:  map[string]string{"b": StatePending},
			reasons: map[string]string{"b": "no WireGuard key"},
		},
		{
			name:    "record without pod CIDRs yet is pending",
			records: []brokerv1.Cluster{rec("b", 1, kb.String(), "192.0.2.2:51820", nil)},
			states:  map[string]string{"b": StatePending},
		},
		{
			name: "unusable key, zero key and endpoint are invalid",
			records: []brokerv1.Cluster{
				rec("b", 1, "not-a-key", "192.0.2.2:51820", []string{"10.2.0.0/16"}),
				rec("c", 2, wgtypes.Key{}.String(), "192.0.2.3:51820", []string{"10.3.0.0/16"}),
				rec("d", 3, kc.String(), "0.0.0.0:51820", []string{"10.4.0.0/16"}),
				rec("e", 4, kb.String(), "192.0.2.5:51820", []string{"10.5.0.0/33"}),
			},
			states:  map[string]string{"b": StateInvalid, "c": StateInvalid, "d": StateInvalid, "e": StateInvalid},
			reasons: map[string]string{"b": "public key", "c": "all zeros", "d": "not a usable ip:port", "e": "10.5.0.0/33"},
		},
		{
			name:    "our own key",
			records: []brokerv1.Cluster{rec("b", 1, self.String(), "192.0.2.2:51820", []string{"10.2.0.0/16"})},
			states:  map[string]string{"b": StateKeyConflict},
			reasons: map[string]string{"b": "this cluster's own"},
		},
		{
			name: "duplicate key: the older record wins, whatever the list order",
			records: []brokerv1.Cluster{
				rec("z-new", 5, kb.String(), "192.0.2.9:51820", []string{"10.9.0.0/16"}),
				rec("b", 1, kb.String(), "192.0.2.2:51820", []string{"10.2.0.0/16"}),
			},
			peers:   []string{"b"},
			states:  map[string]string{"z-new": StateKeyConflict},
			reasons: map[string]string{"z-new": "already used by cluster b"},
		},
		{
			name:    "overlap with our own CIDRs always loses",
			records: []brokerv1.Cluster{rec("b", -100, kb.String(), "192.0.2.2:51820", []string{"10.2.0.0/16"}, "10.91.128.0/17")},
			states:  map[string]string{"b": StateCIDRConflict},
			reasons: map[string]string{"b": "10.91.128.0/17 overlaps this cluster's own 10.91.0.0/16"},
		},
		{
			name: "overlap between remotes: the older record wins",
			records: []brokerv1.Cluster{
				rec("c", 2, kc.String(), "192.0.2.3:51820", []string{"10.2.128.0/17"}),
				rec("b", 1, kb.String(), "192.0.2.2:51820", []string{"10.2.0.0/16"}),
			},
			peers:   []string{"b"},
			states:  map[string]string{"c": StateCIDRConflict},
			reasons: map[string]string{"c": "overlaps cluster b's 10.2.0.0/16 (older record wins)"},
		},
		{
			name: "same age: the name decides",
			records: []brokerv1.Cluster{
				rec("c", 1, kc.String(), "192.0.2.3:51820", []string{"10.2.0.0/16"}),
				rec("b", 1, kb.String(), "192.0.2.2:51820", []string{"10.2.0.0/16"}),
			},
			peers:  []string{"b"},
			states: map[string]string{"c": StateCIDRConflict},
		},
		{
			name: "a loser claims nothing: a third record overlapping only the loser is fine",
			records: []brokerv1.Cluster{
				rec("b", 1, kb.String(), "192.0.2.2:51820", []string{"10.1.0.0/24", "10.2.0.0/16"}),
				rec("c", 2, kc.String(), "192.0.2.3:51820", []string{"10.2.0.0/16"}),
			},
			peers:  []string{"c"},
			states: map[string]string{"b": StateCIDRConflict},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			peers, verdicts := Plan(local, tt.records)
			var got []string
			for _, p := range peers {
				got = append(got, p.Cluster)
			}
			if strings.Join(got, ",") != strings.Join(tt.peers, ",") {
				t.Errorf("peers %v, want %v (verdicts %+v)", got, tt.peers, verdicts)
			}
			for _, v := range verdicts {
				if v.Cluster == "a" {
					t.Errorf("our own record got a verdict: %+v", v)
				}
				if want := tt.states[v.Cluster]; v.State != want {
					t.Errorf("%s: state %q, want %q (%s)", v.Cluster, v.State, want, v.Reason)
				}
				if want := tt.reasons[v.Cluster]; !strings.Contains(v.Reason, want) {
					t.Errorf("%s: reason %q lacks %q", v.Cluster, v.Reason, want)
				}
			}
		})
	}
}

func TestPlanPeerFields(t *testing.T) {
	kb := key(t)
	peers, _ := Plan(Local{Cluster: "a"}, []brokerv1.Cluster{
		rec("b", 1, kb.String(), "[::ffff:192.0.2.2]:51820", []string{"10.2.7.0/16", "10.2.0.0/16"}, "10.92.0.0/16"),
	})
	if len(peers) != 1 {
		t.Fatalf("got %d peers", len(peers))
	}
	p := peers[0]
	if p.Key != kb || p.Endpoint.String() != "192.0.2.2:51820" || p.TunnelAddr.String() != "10.2.255.254" {
		t.Errorf("peer %+v", p)
	}
	if got := p.AllowedIPs; len(got) != 2 || got[0].String() != "10.2.0.0/16" || got[1].String() != "10.92.0.0/16" {
		t.Errorf("allowed IPs %v, want the masked, de-duplicated, sorted CIDRs", got)
	}
}

func TestTunnelAddress(t *testing.T) {
	for in, want := range map[string]string{
		"10.244.0.0/16":  "10.244.255.254",
		"10.244.3.0/24":  "10.244.3.254",
		"10.244.3.77/24": "10.244.3.254",
		"10.0.0.0/8":     "10.255.255.254",
		"10.1.2.4/31":    "10.1.2.4",
		"10.1.2.4/32":    "10.1.2.4",
		"fd00:1::/64":    "fd00:1::ffff:ffff:ffff:fffe",
		"fd00:1::/120":   "fd00:1::fe",
	} {
		if got := TunnelAddress(netip.MustParsePrefix(in)).String(); got != want {
			t.Errorf("TunnelAddress(%s) = %s, want %s", in, got, want)
		}
	}
}

// FuzzPlan feeds arbitrary record fields to Plan: it must never panic,
// and whatever it peers must be usable and disjoint.
func FuzzPlan(f *testing.F) {
	f.Add("b", "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=", "192.0.2.2:51820", "10.2.0.0/16", "10.92.0.0/16", "c", "10.2.0.0/17")
	f.Add("b", "", "", "", "", "", "")
	f.Add("b", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "[::1]:0", "::/0", "0.0.0.0/0", "b", "garbage")
	f.Fuzz(func(t *testing.T, name, pub, endpoint, pod, svc, name2, pod2 string) {
		records := []brokerv1.Cluster{
			rec(name, 1, pub, endpoint, []string{pod}, svc),
			rec(name2, 2, pub, endpoint, []string{pod2}),
		}
		peers, verdicts := Plan(Local{Cluster: "a"}, records)
		if len(verdicts) > len(records) {
			t.Fatalf("%d verdicts for %d records", len(verdicts), len(records))
		}
		var all []netip.Prefix
		for _, p := range peers {
			if p.Key == (wgtypes.Key{}) || !p.Endpoint.IsValid() || len(p.AllowedIPs) == 0 || !p.TunnelAddr.IsValid() {
				t.Fatalf("unusable peer %+v", p)
			}
			for _, a := range p.AllowedIPs {
				for _, b := range all {
					if a.Overlaps(b) {
						t.Fatalf("peers overlap: %s and %s", a, b)
					}
				}
			}
			all = append(all, p.AllowedIPs...)
		}
	})
}

func TestJoinCapped(t *testing.T) {
	var items []string
	for i := range 25 {
		items = append(items, strings.Repeat("x", i+1))
	}
	got := joinCapped(items)
	if !strings.HasSuffix(got, "; and 5 more (see isthmus_tunnel_peer_state)") || strings.Count(got, ";") != 20 {
		t.Errorf("joinCapped = %q", got)
	}
	if got := joinCapped(items[:2]); got != "x; xx" {
		t.Errorf("joinCapped = %q", got)
	}
}

// BenchmarkPlan plans a clusterset of b.N-independent sizes; the figures
// go to bench/README.md through bench/tunnel.
func BenchmarkPlan(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			records := disjointRecords(b, n)
			b.ResetTimer()
			for b.Loop() {
				Plan(Local{Cluster: "c0"}, records)
			}
		})
	}
}

// disjointRecords are n records with their own keys and disjoint pod and
// service CIDRs, as in a clusterset without conflicts.
func disjointRecords(b *testing.B, n int) []brokerv1.Cluster {
	var records []brokerv1.Cluster
	for i := range n {
		records = append(records, rec(fmt.Sprintf("c%d", i), i, key(b).String(), "192.0.2.1:51820",
			[]string{fmt.Sprintf("10.%d.%d.0/24", 64+i/256, i%256)}, fmt.Sprintf("172.%d.%d.0/24", 16+i/256, i%256)))
	}
	return records
}

// TestPlanRefusesClaims: a member's own record cannot take a route it may
// not have (the route-hijack attack: a member merged 192.0.2.0/24 into its
// podCIDRs and every other node routed it into the member's tunnel).
func TestPlanRefusesClaims(t *testing.T) {
	kb, kc, kd := key(t), key(t), key(t)
	local := Local{Cluster: "a", PublicKey: key(t),
		PodCIDRs:  []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")},
		Protected: []netip.Prefix{netip.MustParsePrefix("172.30.0.0/24")}, // this node's underlay
	}
	tests := []struct {
		name   string
		record brokerv1.Cluster
		rule   string // "" when it becomes a peer
	}{
		{"ordinary ranges", rec("b", 1, kb.String(), "192.0.2.2:51820", []string{"10.2.0.0/16"}, "10.92.0.0/16"), ""},
		{"a default route, with no allowlist known", rec("c", 1, kc.String(), "192.0.2.3:51820", []string{"10.3.0.0/16", "0.0.0.0/0"}), brokerv1.RuleDefaultRoute},
		{"half the IPv4 space", rec("c", 1, kc.String(), "192.0.2.3:51820", []string{"128.0.0.0/1"}), brokerv1.RuleTooWide},
		{"a wide IPv6 range", rec("c", 1, kc.String(), "192.0.2.3:51820", []string{"10.3.0.0/16", "2000::/3"}), brokerv1.RuleTooWide},
		{"this node's own network", rec("c", 1, kc.String(), "192.0.2.3:51820", []string{"172.30.0.0/16"}), brokerv1.RuleProtected},
		{"its own tunnel endpoint", rec("d", 1, kd.String(), "10.4.0.1:51820", []string{"10.4.0.0/16"}), brokerv1.RuleProtected},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, plan := range []func() ([]Peer, []Verdict){
				func() ([]Peer, []Verdict) { return Plan(local, []brokerv1.Cluster{tt.record}) },
				func() ([]Peer, []Verdict) { // the incremental planner must agree
					var p planner
					p.reset(local, nil)
					p.update(tt.record.Name, &tt.record)
					var peers []Peer
					for _, pe := range p.peers {
						peers = append(peers, pe)
					}
					return peers, []Verdict{p.verdicts[tt.record.Name]}
				},
			} {
				peers, verdicts := plan()
				if tt.rule == "" {
					if len(peers) != 1 {
						t.Fatalf("no peer for an allowed record: %+v", verdicts)
					}
					continue
				}
				if len(peers) != 0 {
					t.Fatalf("peer %+v for a record claiming what it may not", peers)
				}
				if v := verdicts[0]; v.State != StateRefused || !strings.Contains(v.Reason, tt.rule) {
					t.Errorf("verdict %+v; want %s naming %s", v, StateRefused, tt.rule)
				}
			}
		})
	}
}
