package v1alpha1

import (
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func lease(cluster string, renew time.Time, secs int32) *coordinationv1.Lease {
	rt := metav1.NewMicroTime(renew)
	l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: LeaseName(cluster), Labels: map[string]string{LabelSourceCluster: cluster}}}
	l.Spec.RenewTime = &rt
	if secs != 0 {
		l.Spec.LeaseDurationSeconds = &secs
	}
	return l
}

func TestHeartbeatClockJudge(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)
	up := &BrokerLink{Up: true, Since: t0.Add(-time.Hour)}
	const withdraw = 5 * time.Minute
	tests := []struct {
		name     string
		observe  func(c *HeartbeatClock) // what the informer delivered
		link     *BrokerLink
		at       time.Time
		want     Health
		wantNext time.Duration
	}{
		{name: "never seen is healthy", observe: func(*HeartbeatClock) {}, link: up, at: t0, want: Healthy},
		{name: "no broker yet judges nothing",
			observe: func(c *HeartbeatClock) { c.Observe(lease("b", t0, 30), t0.Add(-time.Hour)) },
			link:    nil, at: t0, want: Healthy},
		{name: "renewed within its duration",
			observe: func(c *HeartbeatClock) { c.Observe(lease("b", t0, 30), t0) },
			link:    up, at: t0.Add(10 * time.Second), want: Healthy, wantNext: 20 * time.Second},
		{name: "lapsed after its own duration",
			observe: func(c *HeartbeatClock) { c.Observe(lease("b", t0, 30), t0) },
			link:    up, at: t0.Add(31 * time.Second), want: Lapsed, wantNext: withdraw - 31*time.Second},
		{name: "withdrawn after the withdraw period",
			observe: func(c *HeartbeatClock) { c.Observe(lease("b", t0, 30), t0) },
			link:    up, at: t0.Add(withdraw + time.Second), want: Withdrawn},
		{name: "a Lease naming no duration uses the default",
			observe: func(c *HeartbeatClock) { c.Observe(lease("b", t0, 0), t0) },
			link:    up, at: t0.Add(15 * time.Second), want: Lapsed, wantNext: withdraw - 15*time.Second},
		{name: "a renewTime far in the future buys nothing: our clock decides",
			observe: func(c *HeartbeatClock) { c.Observe(lease("b", t0.Add(24*time.Hour), 30), t0) },
			link:    up, at: t0.Add(time.Minute), want: Lapsed, wantNext: withdraw - time.Minute},
		{name: "first found renewed a while ago: judged from that renewal",
			observe: func(c *HeartbeatClock) { c.Observe(lease("b", t0.Add(-40*time.Second), 30), t0) },
			link:    up, at: t0, want: Lapsed, wantNext: withdraw - 40*time.Second},
		{name: "first found long unrenewed: withdrawn at once (a peer that died before this process started)",
			observe: func(c *HeartbeatClock) { c.Observe(lease("b", t0.Add(-24*time.Hour), 30), t0) },
			link:    up, at: t0, want: Withdrawn},
		{name: "a renewal seen after first sight counts from this clock",
			observe: func(c *HeartbeatClock) {
				c.Observe(lease("b", t0.Add(-24*time.Hour), 30), t0)
				c.Observe(lease("b", t0.Add(-24*time.Hour+10*time.Second), 30), t0.Add(10*time.Second))
			},
			link: up, at: t0.Add(11 * time.Second), want: Healthy, wantNext: 29 * time.Second},
		{name: "a renewTime in the past only counts at first sight",
			observe: func(c *HeartbeatClock) {
				c.Observe(lease("b", t0, 30), t0)
				c.Observe(lease("b", t0.Add(-24*time.Hour), 30), t0.Add(10*time.Second))
			},
			link: up, at: t0.Add(11 * time.Second), want: Healthy, wantNext: 29 * time.Second},
		{name: "first found long unrenewed, then a broker outage: a full period from its return",
			observe: func(c *HeartbeatClock) { c.Observe(lease("b", t0.Add(-24*time.Hour), 30), t0) },
			link:    &BrokerLink{Up: true, Since: t0.Add(time.Minute)}, at: t0.Add(time.Minute + 40*time.Second), want: Lapsed, wantNext: withdraw - 40*time.Second},
		{name: "the same renewTime seen again is no renewal",
			observe: func(c *HeartbeatClock) {
				c.Observe(lease("b", t0, 30), t0)
				c.Observe(lease("b", t0, 30), t0.Add(time.Minute)) // a resync
			},
			link: up, at: t0.Add(time.Minute), want: Lapsed, wantNext: withdraw - time.Minute},
		{name: "a new renewTime is a renewal",
			observe: func(c *HeartbeatClock) {
				c.Observe(lease("b", t0, 30), t0)
				c.Observe(lease("b", t0.Add(time.Second), 30), t0.Add(time.Minute))
			},
			link: up, at: t0.Add(time.Minute + 5*time.Second), want: Healthy, wantNext: 25 * time.Second},
		{name: "a huge leaseDurationSeconds is bounded",
			observe: func(c *HeartbeatClock) { c.Observe(lease("b", t0, 1<<30), t0) },
			link:    up, at: t0.Add(MaxLeaseDuration + time.Second), want: Withdrawn},
		{name: "broker down freezes the judgement as of the loss",
			observe: func(c *HeartbeatClock) { c.Observe(lease("b", t0, 30), t0) },
			link:    &BrokerLink{Up: false, Since: t0.Add(10 * time.Second)}, at: t0.Add(time.Hour), want: Healthy},
		{name: "broker back gives a full period from its return",
			observe: func(c *HeartbeatClock) { c.Observe(lease("b", t0, 30), t0) },
			link:    &BrokerLink{Up: true, Since: t0.Add(time.Hour)}, at: t0.Add(time.Hour + 20*time.Second), want: Healthy, wantNext: 10 * time.Second},
		{name: "forgotten is never seen",
			observe: func(c *HeartbeatClock) {
				c.Observe(lease("b", t0, 30), t0)
				c.Forget("b")
			},
			link: up, at: t0.Add(time.Hour), want: Healthy},
		{name: "a Lease without the source label teaches nothing",
			observe: func(c *HeartbeatClock) {
				l := lease("b", t0, 30)
				delete(l.Labels, LabelSourceCluster)
				c.Observe(l, t0)
			},
			link: up, at: t0.Add(time.Hour), want: Healthy},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := &HeartbeatClock{Default: 10 * time.Second}
			tc.observe(c)
			got, next := c.Judge("b", tc.link, tc.at, withdraw)
			if got != tc.want || next != tc.wantNext {
				t.Errorf("Judge = %v, next in %v; want %v, next in %v", got, next, tc.want, tc.wantNext)
			}
		})
	}
}

func TestReachability(t *testing.T) {
	local := &Cluster{Spec: ClusterSpec{ClusterID: "a"}, Status: ClusterStatus{Tunnel: &TunnelStatus{Peers: []TunnelPeerStatus{
		{Cluster: "b", State: TunnelPeerError},
		{Cluster: "c", State: TunnelPeerConflict},
		{Cluster: "d", State: TunnelPeerConnecting},
	}}}}
	tests := []struct {
		name       string
		health     Health
		local      *Cluster
		peer       string
		ok         bool
		wantReason string
	}{
		{"healthy, no tunnel view", Healthy, nil, "b", true, ""},
		{"lapsed heartbeat", Lapsed, nil, "b", false, ReasonLeaseExpired},
		{"withdrawn heartbeat", Withdrawn, local, "d", false, ReasonWithdrawn},
		{"tunnel in error", Healthy, local, "b", false, "TunnelError"},
		{"tunnel in conflict", Healthy, local, "c", false, "TunnelConflict"},
		{"tunnel still connecting gets its chance", Healthy, local, "d", true, ""},
		{"a peer the tunnel does not list", Healthy, local, "e", true, ""},
		{"the local cluster itself", Healthy, local, "a", true, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ok, reason := Reachability(tc.health, tc.local, tc.peer)
			if ok != tc.ok || reason != tc.wantReason {
				t.Errorf("Reachability = %v %q; want %v %q", ok, reason, tc.ok, tc.wantReason)
			}
		})
	}
}

func TestParseDataplane(t *testing.T) {
	for _, s := range []string{"direct", "gateway"} {
		if d, err := ParseDataplane(s); err != nil || string(d) != s {
			t.Errorf("ParseDataplane(%q) = %q, %v", s, d, err)
		}
	}
	if _, err := ParseDataplane("Gateway"); err == nil {
		t.Error("ParseDataplane accepted a value that is not one of the two modes")
	}
}
