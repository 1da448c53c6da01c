package tunnel

import (
	"net"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

func TestTunnelStatus(t *testing.T) {
	hs := time.Date(2026, 1, 1, 12, 0, 0, 500, time.UTC)
	ep := &net.UDPAddr{IP: net.ParseIP("192.0.2.2"), Port: 51820}
	dev := &Device{Name: "isthmus0", Implementation: Userspace, Offload: true}
	peers := []PeerStatus{
		{Cluster: "b", State: StateConnected, Reason: "Healthy", Message: "ok", RTT: 180 * time.Microsecond,
			Peer: &wgtypes.Peer{Endpoint: ep, LastHandshakeTime: hs}},
		{Cluster: "c", State: StateError, Reason: "ProbesLost", Message: "lost", RTT: 90 * time.Microsecond,
			Peer: &wgtypes.Peer{Endpoint: ep, LastHandshakeTime: hs}},
		{Cluster: "d", State: StateConnecting, Reason: "AwaitingHandshake", Message: "waiting", Peer: &wgtypes.Peer{Endpoint: ep}},
		{Cluster: "e", State: StateCIDRConflict, Reason: StateCIDRConflict, Message: strings.Repeat("x", 600)},
		{Cluster: "f", State: StatePending, Reason: StatePending, Message: "no key yet"},
		{Cluster: "g", State: StateKeyConflict, Reason: StateKeyConflict, Message: "dup"},
	}
	ts := tunnelStatus(dev, peers, 3)
	if ts.Implementation != "userspace" || !ts.Offload || ts.KeyGeneration != 3 || len(ts.Peers) != len(peers) {
		t.Fatalf("status %+v", ts)
	}
	want := map[string]brokerv1.TunnelPeerState{"b": brokerv1.TunnelPeerConnected, "c": brokerv1.TunnelPeerError, "d": brokerv1.TunnelPeerConnecting,
		"e": brokerv1.TunnelPeerConflict, "f": brokerv1.TunnelPeerConnecting, "g": brokerv1.TunnelPeerConflict}
	for _, p := range ts.Peers {
		if p.State != want[p.Cluster] {
			t.Errorf("%s: state %s, want %s", p.Cluster, p.State, want[p.Cluster])
		}
		if len(p.Message) > 512 || len(p.Reason) > 64 {
			t.Errorf("%s: reason or message over the API's limits: %d, %d", p.Cluster, len(p.Reason), len(p.Message))
		}
	}
	b, c, d := ts.Peers[0], ts.Peers[1], ts.Peers[2]
	if b.Endpoint != "192.0.2.2:51820" || b.LastHandshakeTime == nil || !b.LastHandshakeTime.Equal(&metav1.Time{Time: hs.Truncate(time.Second)}) || b.RTTMicros != 180 {
		t.Errorf("b: %+v", b)
	}
	if c.RTTMicros != 0 {
		t.Errorf("c is in Error but carries the RTT of an old probe: %+v", c)
	}
	if d.LastHandshakeTime != nil {
		t.Errorf("d never had a handshake but has a time: %+v", d)
	}
	if e := ts.Peers[3]; e.Reason != "CIDRConflict" || !strings.HasSuffix(e.Message, "…") {
		t.Errorf("e: %+v", e)
	}
	var many []PeerStatus
	for range maxPeerStatuses + 5 {
		many = append(many, PeerStatus{Cluster: "x", State: StateConnected})
	}
	if n := len(tunnelStatus(dev, many, 1).Peers); n != maxPeerStatuses {
		t.Errorf("%d peer statuses, want the API's limit %d", n, maxPeerStatuses)
	}
}

// TestStatusWriteTriggers: a state change is written (at most once per
// interval), RTT and handshake times alone are not, and everything is
// refreshed every statusRefresh.
func TestStatusWriteTriggers(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	interval := 10 * time.Second
	conds := []metav1.Condition{{Type: ConditionPeersConnected, Status: metav1.ConditionTrue, Reason: "AllConnected", Message: "b"}}
	status := func(state brokerv1.TunnelPeerState, rtt int64, hs time.Time) *brokerv1.TunnelStatus {
		return &brokerv1.TunnelStatus{Implementation: "userspace", KeyGeneration: 1, Peers: []brokerv1.TunnelPeerStatus{
			{Cluster: "b", State: state, Reason: string(state), Endpoint: "192.0.2.2:51820", RTTMicros: rtt, LastHandshakeTime: &metav1.Time{Time: hs}}}}
	}
	var w statusWriter
	if !w.due(conds, status(brokerv1.TunnelPeerConnected, 100, now), now, interval) {
		t.Fatal("the first status is not due")
	}
	w.last, w.lastTunnel, w.written = conds, status(brokerv1.TunnelPeerConnected, 100, now), now
	for _, tt := range []struct {
		name  string
		after time.Duration
		ts    *brokerv1.TunnelStatus
		gen   int64
		due   bool
	}{
		{"RTT and handshake change only", 30 * time.Second, status(brokerv1.TunnelPeerConnected, 900, now.Add(2*time.Minute)), 1, false},
		{"state change within the interval", 2 * time.Second, status(brokerv1.TunnelPeerError, 100, now), 1, false},
		{"state change after the interval", 11 * time.Second, status(brokerv1.TunnelPeerError, 100, now), 1, true},
		{"key generation", 11 * time.Second, status(brokerv1.TunnelPeerConnected, 100, now), 2, true},
		{"nothing changed, refresh due", statusRefresh, status(brokerv1.TunnelPeerConnected, 100, now), 1, true},
	} {
		tt.ts.KeyGeneration = tt.gen
		if got := w.due(conds, tt.ts, now.Add(tt.after), interval); got != tt.due {
			t.Errorf("%s: due = %v, want %v", tt.name, got, tt.due)
		}
	}
	changed := []metav1.Condition{{Type: ConditionPeersConnected, Status: metav1.ConditionFalse, Reason: "PeersNotConnected", Message: "b"}}
	if !w.due(changed, status(brokerv1.TunnelPeerConnected, 100, now), now.Add(interval), interval) {
		t.Error("a changed condition is not due")
	}
}
