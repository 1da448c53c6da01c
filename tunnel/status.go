package tunnel

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/v1alpha1"
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

// statusWriter writes the tunnel's conditions when they change, at most
// once per StatusInterval, so a flapping peer cannot flood the broker.
type statusWriter struct {
	last    []metav1.Condition
	written time.Time
}

func (w *statusWriter) maybeWrite(ctx context.Context, t *Tunnel) {
	conds := t.conditions()
	if sameConditions(w.last, conds) || time.Since(w.written) < t.cfg.StatusInterval {
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
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": brokerv1.SchemeGroupVersion.String(),
		"kind":       "Cluster",
		"metadata":   map[string]any{"name": t.cfg.ClusterID, "namespace": t.cfg.BrokerNamespace},
		"status":     map[string]any{"conditions": items},
	}}
	_, err := t.broker.Resource(clusterGVR).Namespace(t.cfg.BrokerNamespace).ApplyStatus(ctx, t.cfg.ClusterID, obj,
		metav1.ApplyOptions{FieldManager: FieldManager, Force: true})
	if err != nil {
		t.metrics.reconcileErrors.WithLabelValues("status").Inc()
		t.log.Warn("writing the tunnel's conditions on the cluster record", "err", err)
		return
	}
	w.last, w.written = conds, time.Now()
}

func sameConditions(a, b []metav1.Condition) bool {
	return slices.EqualFunc(a, b, func(x, y metav1.Condition) bool {
		return x.Type == y.Type && x.Status == y.Status && x.Reason == y.Reason && x.Message == y.Message
	})
}

// conditions are the tunnel's conditions now. Messages hold no timings
// that change every second, so an unchanged state writes nothing.
func (t *Tunnel) conditions() []metav1.Condition {
	dev, peers, err := t.Status()
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
			down = append(down, fmt.Sprintf("%s is %s: %s", p.Cluster, p.State, p.Reason))
		case StateCIDRConflict, StateKeyConflict, StateInvalid:
			bad = append(bad, fmt.Sprintf("%s (%s): %s", p.Cluster, p.State, p.Reason))
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
