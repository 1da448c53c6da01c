package tunnel

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// The conditions the tunnel owns on its cluster's record.
const (
	// ConditionReady says whether the device is up, which implementation
	// it is and whether TUN offload was negotiated.
	ConditionReady = "TunnelReady"
	// ConditionPeersConnected says whether every peered cluster is
	// reachable through the tunnel, naming those that are not.
	ConditionPeersConnected = "TunnelPeersConnected"
	// ConditionConflict names the remote clusters left unpeered because of
	// overlapping CIDRs, a duplicate key or an unusable record.
	ConditionConflict = "TunnelConflict"
)

// publishSpec applies this cluster's WireGuard key and endpoint to its
// record, as FieldManager. The cluster id and owner label are applied too
// (the same values the agent applies), so the record can be created by
// whichever of the two comes first and passes the broker's admission
// policy.
func (t *Tunnel) publishSpec(ctx context.Context) error {
	t.mu.Lock()
	pub := t.pub
	t.mu.Unlock()
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": brokerv1.SchemeGroupVersion.String(),
		"kind":       "Cluster",
		"metadata": map[string]any{
			"name":      t.cfg.ClusterID,
			"namespace": t.cfg.BrokerNamespace,
			"labels":    map[string]any{brokerv1.LabelSourceCluster: t.cfg.ClusterID},
		},
		"spec": map[string]any{
			"clusterID": t.cfg.ClusterID,
			"wireGuard": map[string]any{
				"publicKey": pub.String(),
				"endpoint":  t.cfg.Endpoint.String(),
			},
		},
	}}
	_, err := t.broker.Resource(clusterGVR).Namespace(t.cfg.BrokerNamespace).Apply(ctx, t.cfg.ClusterID, obj,
		metav1.ApplyOptions{FieldManager: FieldManager, Force: true})
	if err != nil {
		t.metrics.reconcileErrors.WithLabelValues("status").Inc()
		return fmt.Errorf("publishing the WireGuard key and endpoint on cluster record %s/%s: %w", t.cfg.BrokerNamespace, t.cfg.ClusterID, err)
	}
	return nil
}

// statusRefresh is how often the status is written even when no state
// changed, so that the handshake times and RTTs it carries are never
// older than this.
const statusRefresh = 5 * time.Minute

// statusWriter writes the tunnel's status (status.tunnel and the
// conditions) when a state changes, at most once per StatusInterval, so a
// flapping peer cannot flood the broker. What triggers a write is a
// change of a condition or of a peer's state, reason, message or endpoint,
// the device or the key generation; handshake times and RTTs change all
// the time and are only carried along, refreshed every statusRefresh.
type statusWriter struct {
	last       []metav1.Condition
	lastTunnel *brokerv1.TunnelStatus
	written    time.Time
}

func (w *statusWriter) maybeWrite(ctx context.Context, t *Tunnel) {
	// Within the interval nothing can be written, so the device (one read
	// of every peer) is not read either.
	if since := time.Since(w.written); since < t.cfg.StatusInterval && since < statusRefresh {
		return
	}
	dev, peers, err := t.Status()
	conds := t.conditions(dev, peers, err)
	t.mu.Lock()
	keyGen := t.keyGen
	t.mu.Unlock()
	ts := tunnelStatus(dev, peers, keyGen)
	if !w.due(conds, ts, time.Now(), t.cfg.StatusInterval) {
		return
	}
	now := metav1.Now()
	for i := range conds {
		conds[i].LastTransitionTime = now
		for _, old := range w.last {
			if old.Type == conds[i].Type && old.Status == conds[i].Status {
				conds[i].LastTransitionTime = old.LastTransitionTime
			}
		}
	}
	items := make([]any, 0, len(conds))
	for _, c := range conds {
		u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&c)
		if err != nil {
			t.log.Error("encoding a condition", "err", err)
			return
		}
		items = append(items, u)
	}
	tu, err := runtime.DefaultUnstructuredConverter.ToUnstructured(ts)
	if err != nil {
		t.log.Error("encoding the tunnel status", "err", err)
		return
	}
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": brokerv1.SchemeGroupVersion.String(),
		"kind":       "Cluster",
		"metadata":   map[string]any{"name": t.cfg.ClusterID, "namespace": t.cfg.BrokerNamespace},
		"status":     map[string]any{"conditions": items, "tunnel": tu},
	}}
	_, err = t.broker.Resource(clusterGVR).Namespace(t.cfg.BrokerNamespace).ApplyStatus(ctx, t.cfg.ClusterID, obj,
		metav1.ApplyOptions{FieldManager: FieldManager, Force: true})
	if err != nil {
		t.metrics.reconcileErrors.WithLabelValues("status").Inc()
		t.log.Warn("writing the tunnel's status on the cluster record", "err", err)
		return
	}
	t.metrics.statusWrites.Inc()
	w.last, w.lastTunnel, w.written = conds, ts, time.Now()
}

// due says whether a status should be written now: on a change, once the
// interval since the last write has passed, and every statusRefresh.
func (w *statusWriter) due(conds []metav1.Condition, ts *brokerv1.TunnelStatus, now time.Time, interval time.Duration) bool {
	since := now.Sub(w.written)
	if since >= statusRefresh {
		return true
	}
	changed := !sameConditions(w.last, conds) || !sameTunnel(w.lastTunnel, ts)
	return changed && since >= interval
}

func sameConditions(a, b []metav1.Condition) bool {
	return slices.EqualFunc(a, b, func(x, y metav1.Condition) bool {
		return x.Type == y.Type && x.Status == y.Status && x.Reason == y.Reason && x.Message == y.Message
	})
}

// sameTunnel compares what triggers a write: everything but handshake
// times and RTTs.
func sameTunnel(a, b *brokerv1.TunnelStatus) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Implementation == b.Implementation && a.Offload == b.Offload && a.KeyGeneration == b.KeyGeneration &&
		slices.EqualFunc(a.Peers, b.Peers, func(x, y brokerv1.TunnelPeerStatus) bool {
			return x.Cluster == y.Cluster && x.State == y.State && x.Reason == y.Reason && x.Message == y.Message && x.Endpoint == y.Endpoint
		})
}

// maxPeerStatuses is the API's limit on status.tunnel.peers.
const maxPeerStatuses = 1024

// tunnelStatus is status.tunnel for the device and the peers' states
// (sorted by cluster, as Status returns them). A remote whose record is
// unusable or conflicts is Conflict, its reason the kind of conflict; one
// whose record has no key or CIDRs yet is Connecting, reason Pending.
func tunnelStatus(dev *Device, peers []PeerStatus, keyGen int64) *brokerv1.TunnelStatus {
	ts := &brokerv1.TunnelStatus{KeyGeneration: keyGen}
	if dev != nil {
		ts.Implementation, ts.Offload = string(dev.Implementation), dev.Offload
	}
	for _, p := range peers {
		if len(ts.Peers) == maxPeerStatuses {
			break
		}
		ps := brokerv1.TunnelPeerStatus{Cluster: p.Cluster, Reason: capString(p.Reason, 64), Message: capString(p.Message, 512)}
		switch p.State {
		case StateConnected:
			ps.State = brokerv1.TunnelPeerConnected
		case StateConnecting:
			ps.State = brokerv1.TunnelPeerConnecting
		case StatePending:
			ps.State = brokerv1.TunnelPeerConnecting
		case StateCIDRConflict, StateKeyConflict, StateInvalid, StateRefused:
			ps.State = brokerv1.TunnelPeerConflict
		default:
			ps.State = brokerv1.TunnelPeerError
		}
		if p.Peer != nil {
			if p.Peer.Endpoint != nil {
				ps.Endpoint = p.Peer.Endpoint.String()
			}
			if !p.Peer.LastHandshakeTime.IsZero() {
				ps.LastHandshakeTime = &metav1.Time{Time: p.Peer.LastHandshakeTime.Truncate(time.Second)}
			}
		}
		if ps.State == brokerv1.TunnelPeerConnected && p.RTT > 0 {
			ps.RTTMicros = max(1, p.RTT.Microseconds())
		}
		ts.Peers = append(ts.Peers, ps)
	}
	return ts
}

func capString(s string, n int) string {
	if len(s) <= n {
		return s
	}
	// Cut at a rune boundary, leaving room for the ellipsis.
	cut := n - len("…")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// conditions are the tunnel's conditions for a Status snapshot. Messages
// hold no timings that change every second, so an unchanged state writes
// nothing.
func (t *Tunnel) conditions(dev *Device, peers []PeerStatus, err error) []metav1.Condition {
	ready := metav1.Condition{Type: ConditionReady, Status: metav1.ConditionTrue}
	switch {
	case err != nil:
		ready.Status, ready.Reason, ready.Message = metav1.ConditionFalse, "DeviceError", err.Error()
	case t.Ready() != nil:
		ready.Status, ready.Reason, ready.Message = metav1.ConditionFalse, "NotReconciled", t.Ready().Error()
	default:
		ready.Reason, ready.Message = implementationReason(dev), describeDevice(dev)
	}
	connected := metav1.Condition{Type: ConditionPeersConnected, Status: metav1.ConditionTrue, Reason: "AllConnected"}
	conflict := metav1.Condition{Type: ConditionConflict, Status: metav1.ConditionFalse, Reason: "NoConflicts", Message: "every remote cluster's record is usable"}
	var up, down, bad []string
	var kinds []string
	for _, p := range peers {
		switch p.State {
		case StateConnected:
			up = append(up, p.Cluster)
		case StateConnecting, StateError:
			down = append(down, fmt.Sprintf("%s is %s: %s", p.Cluster, p.State, p.Message))
		case StateCIDRConflict, StateKeyConflict, StateInvalid, StateRefused:
			bad = append(bad, fmt.Sprintf("%s (%s): %s", p.Cluster, p.State, p.Message))
			if !slices.Contains(kinds, p.State) {
				kinds = append(kinds, p.State)
			}
		}
	}
	switch {
	case len(down) > 0:
		connected.Status, connected.Reason = metav1.ConditionFalse, "PeersNotConnected"
		connected.Message = joinCapped(down)
	case len(up) == 0:
		connected.Reason, connected.Message = "NoPeers", "no remote cluster is peered"
	default:
		connected.Message = fmt.Sprintf("connected to %d clusters: %s", len(up), joinCapped(up))
	}
	if len(bad) > 0 {
		conflict.Status, conflict.Reason = metav1.ConditionTrue, strings.Join(kinds, "And")
		conflict.Message = joinCapped(bad)
	}
	return []metav1.Condition{ready, connected, conflict}
}

// maxListed caps how many clusters a condition message names, so a large
// clusterset stays well inside the API's 32 KiB message limit.
const maxListed = 20

func joinCapped(items []string) string {
	if len(items) <= maxListed {
		return strings.Join(items, "; ")
	}
	return fmt.Sprintf("%s; and %d more (see isthmus_tunnel_peer_state)", strings.Join(items[:maxListed], "; "), len(items)-maxListed)
}

func implementationReason(d *Device) string {
	switch {
	case d.Implementation == Kernel:
		return "KernelDevice"
	case d.Offload:
		return "UserspaceDeviceWithOffload"
	}
	return "UserspaceDeviceWithoutOffload"
}

func describeDevice(d *Device) string {
	if d.Implementation == Kernel {
		return fmt.Sprintf("kernel WireGuard device %s", d.Name)
	}
	if d.Offload {
		return fmt.Sprintf("embedded wireguard-go device %s; TUN offload negotiated", d.Name)
	}
	return fmt.Sprintf("embedded wireguard-go device %s; TUN offload NOT negotiated, expect about a quarter of the throughput", d.Name)
}
