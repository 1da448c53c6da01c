package v1alpha1

import (
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
)

// The reachability rule: whether traffic to a member should go there now.
// The agent (which imports) and the xDS server (which programs gateways and
// gRPC clients) must answer the same way, so the rule lives here, beside
// the records it reads, and both call it.
//
// A member's heartbeat is judged by this process's own clock: what counts
// is when this process last saw the peer's Lease renewed, not the
// renewTime the peer wrote. The one exception is a Lease as first found
// (at this process's start, or a member's arrival), whose renewal this
// process did not see happen: it counts from the renewTime the peer
// wrote, never later than now. Otherwise every restart of an agent would
// bring a dead peer's endpoints back for a whole withdraw period (5 min by
// default), and a peer that died while agents restarted would stay
// imported until they all had been up that long. So a peer with a fast or
// lying clock can neither keep itself imported while dead nor get another
// peer withdrawn; one whose clock lags by more than its Lease duration
// looks unhealthy to a process that just started, until that process sees
// its next renewal (within a third of its duration).

// Health is what a process concludes from a member's heartbeat Lease.
type Health int

const (
	// Healthy: renewed within its Lease duration (or not yet judged).
	Healthy Health = iota
	// Lapsed: not renewed for its Lease duration. Its exports stay
	// imported, but traffic prefers other clusters.
	Lapsed
	// Withdrawn: not renewed for the withdraw period; its exports leave
	// every import until it renews.
	Withdrawn
)

func (h Health) String() string {
	switch h {
	case Healthy:
		return "healthy"
	case Lapsed:
		return "unhealthy"
	case Withdrawn:
		return "withdrawn"
	}
	return "unknown"
}

// The bounds put on a Lease's own leaseDurationSeconds: a member may choose
// its heartbeat period, but not one so long that it is never judged dead.
const (
	MinLeaseDuration = time.Second
	MaxLeaseDuration = 5 * time.Minute
)

// +kubebuilder:object:generate=false

// BrokerLink is the observing process's own connection to the broker: up
// or down, and since when. While it is down nothing is learned about any
// peer, so every peer's health stays as it was when the link was lost; when
// it returns, every peer gets a full period to be seen renewing again.
type BrokerLink struct {
	Up    bool
	Since time.Time
}

// +kubebuilder:object:generate=false

// HeartbeatClock remembers, for each member, when this process observed
// its Lease being renewed. Feed it every Lease the informer delivers; it is
// safe for concurrent use.
type HeartbeatClock struct {
	// Default is the Lease duration used when a Lease names none.
	Default time.Duration

	mu   sync.Mutex
	seen map[string]heartbeat
}

// +kubebuilder:object:generate=false
type heartbeat struct {
	renew    time.Time // the peer's renewTime, only to tell a renewal apart
	at       time.Time // when this process saw that renewal
	duration time.Duration
}

// Observe records a Lease seen at now (this process's clock). A Lease with
// no source-cluster label or no renewTime teaches nothing and is ignored.
func (c *HeartbeatClock) Observe(l *coordinationv1.Lease, now time.Time) {
	cluster := l.Labels[LabelSourceCluster]
	if cluster == "" || l.Spec.RenewTime == nil {
		return
	}
	d := c.Default
	if s := l.Spec.LeaseDurationSeconds; s != nil && *s > 0 {
		d = time.Duration(*s) * time.Second
	}
	d = min(max(d, MinLeaseDuration), MaxLeaseDuration)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.seen == nil {
		c.seen = map[string]heartbeat{}
	}
	prev, known := c.seen[cluster]
	renew := l.Spec.RenewTime.Time
	if known && renew.Equal(prev.renew) {
		prev.duration = d
		c.seen[cluster] = prev
		return
	}
	at := now
	if !known && renew.Before(now) {
		at = renew // first found: see the rule above
	}
	c.seen[cluster] = heartbeat{renew: renew, at: at, duration: d}
}

// Forget drops a member whose Lease was deleted.
func (c *HeartbeatClock) Forget(cluster string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.seen, cluster)
}

// Judge returns a member's health at now, and how long until that judgement
// would change if nothing new is observed (0 when it cannot change: a
// withdrawn member, or one never seen). A member never seen has not started
// heartbeating yet, which is no reason to drop its exports; a nil link
// means the broker has not been reached yet, and nothing is judged.
func (c *HeartbeatClock) Judge(cluster string, link *BrokerLink, now time.Time, withdrawAfter time.Duration) (Health, time.Duration) {
	c.mu.Lock()
	hb, known := c.seen[cluster]
	c.mu.Unlock()
	if !known || link == nil {
		return Healthy, 0
	}
	ref := now
	if !link.Up {
		ref = link.Since
	}
	last := hb.at
	if link.Up && link.Since.After(last) {
		last = link.Since
	}
	age := ref.Sub(last)
	withdrawAfter = max(withdrawAfter, hb.duration)
	switch {
	case age > withdrawAfter:
		return Withdrawn, 0
	case age > hb.duration:
		if !link.Up {
			return Lapsed, 0
		}
		return Lapsed, withdrawAfter - age
	}
	if !link.Up {
		return Healthy, 0
	}
	return Healthy, hb.duration - age
}

// Reachability combines a member's heartbeat with the local tunnel's view
// of it (the peers in the local Cluster record's tunnel status): a member
// is unreachable when its heartbeat has lapsed, or when the local tunnel
// reports the data path to it in Error (handshakes or probes fail) or
// Conflict (left out for overlapping ranges or a duplicate key, so there is
// no route at all). Connecting is a first handshake still to come and is
// given its chance. local may be nil (no record yet, or no tunnel). The
// reason is empty when reachable, else LeaseExpired, Withdrawn,
// TunnelError or TunnelConflict.
func Reachability(h Health, local *Cluster, peer string) (reachable bool, reason string) {
	switch h {
	case Lapsed:
		return false, ReasonLeaseExpired
	case Withdrawn:
		return false, ReasonWithdrawn
	}
	if local == nil || local.Spec.ClusterID == peer || local.Status.Tunnel == nil {
		return true, ""
	}
	for _, p := range local.Status.Tunnel.Peers {
		if p.Cluster == peer && (p.State == TunnelPeerError || p.State == TunnelPeerConflict) {
			return false, "Tunnel" + string(p.State)
		}
	}
	return true, ""
}
