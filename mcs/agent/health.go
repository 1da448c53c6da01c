package agent

import (
	"context"
	"fmt"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// clusterHealth is what this agent concludes from another cluster's
// heartbeat Lease.
type clusterHealth int

const (
	healthy   clusterHealth = iota
	unhealthy               // Lease not renewed for LeaseDuration: still imported
	withdrawn               // Lease not renewed for WithdrawAfter: left out of imports
)

// brokerLink is this agent's own connection to the broker: up or down,
// since when.
type brokerLink struct {
	up    bool
	since time.Time
}

func (h clusterHealth) String() string {
	return [...]string{"healthy", "unhealthy", "withdrawn"}[h]
}

// healthOf computes a cluster's health from its Lease. This cluster is
// always healthy to itself, and a cluster without a Lease has not started
// heartbeating yet, which is no reason to drop its exports.
//
// A peer's silence only counts while this agent itself reaches the broker:
// when the broker is away, every Lease stops being renewed and nothing is
// learned about the peers, so their health is frozen as of the moment the
// broker was lost; and after the broker returns, each peer is given a
// full period to renew again.
func (a *Agent) healthOf(cluster string) clusterHealth {
	if cluster == a.cfg.ClusterID {
		return healthy
	}
	o, ok, _ := a.leases.GetByKey(a.cfg.BrokerNamespace + "/" + brokerv1.LeaseName(cluster))
	if !ok {
		return healthy
	}
	l := o.(*coordinationv1.Lease)
	if l.Spec.RenewTime == nil {
		return healthy
	}
	link := a.link.Load()
	if link == nil {
		return healthy // the broker has not been reached yet
	}
	ref := time.Now()
	if !link.up {
		ref = link.since
	}
	last := l.Spec.RenewTime.Time
	if link.up && link.since.After(last) {
		last = link.since
	}
	age := ref.Sub(last)
	switch {
	case age > a.cfg.WithdrawAfter:
		return withdrawn
	case age > a.cfg.LeaseDuration:
		return unhealthy
	}
	return healthy
}

// unreachable reports whether traffic to cluster should go elsewhere now:
// its heartbeat has lapsed, or this cluster's own tunnel reports the data
// path to it down (the peer in Error or Conflict in this cluster's record,
// the signal the xDS server uses too). With the default 30 s Lease the
// tunnel's probes (3 lost, one a second) say it first.
func (a *Agent) unreachable(cluster string) bool {
	if cluster == a.cfg.ClusterID {
		return false
	}
	if a.healthOf(cluster) != healthy {
		return true
	}
	rec, err := a.clusters.Clusters(a.cfg.BrokerNamespace).Get(a.cfg.ClusterID)
	if err != nil {
		return false
	}
	ts := rec.Status.Tunnel
	if ts == nil {
		return false
	}
	for _, p := range ts.Peers {
		if p.Cluster == cluster {
			return p.State == brokerv1.TunnelPeerError || p.State == brokerv1.TunnelPeerConflict
		}
	}
	return false
}

// recheckHealth recomputes every known cluster's health and, when any
// changed, queues every import.
func (a *Agent) recheckHealth() {
	changed := false
	a.healthMu.Lock()
	for _, o := range a.leases.List() {
		l := o.(*coordinationv1.Lease)
		cluster := l.Labels[brokerv1.LabelSourceCluster]
		if cluster == "" || cluster == a.cfg.ClusterID {
			continue
		}
		h := a.healthOf(cluster)
		if old, seen := a.health[cluster]; !seen || old != h {
			if seen {
				a.log.Info("cluster health changed", "peer", cluster, "from", old, "to", h)
			}
			a.health[cluster] = h
			changed = true
		}
	}
	a.healthMu.Unlock()
	if changed {
		a.importsAll()
	}
}

// watchHealth rechecks health as time passes, since a Lease that stops
// being renewed sends no event.
func (a *Agent) watchHealth(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			a.recheckHealth()
			a.reportHealth(ctx)
		}
	}
}

// reportHealth writes, into each Cluster record whose Heartbeat condition
// no longer says what this agent observes, the condition it observes. Every
// member computes the same thing from the same Leases, so writes only
// happen on changes. Nothing is written while the broker is unreachable.
func (a *Agent) reportHealth(ctx context.Context) {
	if link := a.link.Load(); link == nil || !link.up {
		return
	}
	recs, _ := a.clusters.Clusters(a.cfg.BrokerNamespace).List(everything)
	for _, rec := range recs {
		want := a.heartbeatCondition(a.healthOf(rec.Spec.ClusterID))
		cur := meta.FindStatusCondition(rec.Status.Conditions, want.Type)
		if cur != nil && cur.Status == want.Status && cur.Reason == want.Reason && cur.Message == want.Message {
			continue
		}
		updated := rec.DeepCopy()
		meta.SetStatusCondition(&updated.Status.Conditions, want)
		_, err := a.cfg.BrokerClient.BrokerV1alpha1().Clusters(rec.Namespace).UpdateStatus(ctx, updated, metav1.UpdateOptions{FieldManager: fieldManager})
		a.countWrite("broker", "status", err)
		if err != nil && !apierrors.IsConflict(err) {
			a.log.Warn("reporting a cluster's heartbeat", "peer", rec.Spec.ClusterID, "err", err)
		}
	}
}

func (a *Agent) heartbeatCondition(h clusterHealth) metav1.Condition {
	c := metav1.Condition{Type: brokerv1.ClusterConditionHeartbeat, Status: metav1.ConditionTrue, Reason: brokerv1.ReasonLeaseRenewed,
		Message: fmt.Sprintf("The cluster renews its heartbeat Lease (valid %v).", a.cfg.LeaseDuration)}
	switch h {
	case unhealthy:
		c.Status, c.Reason = metav1.ConditionFalse, brokerv1.ReasonLeaseExpired
		c.Message = fmt.Sprintf("The heartbeat Lease has not been renewed for over %v: check the cluster's isthmus agent and its access to the broker. Its exports stay imported until %v without renewal.",
			a.cfg.LeaseDuration, a.cfg.WithdrawAfter)
	case withdrawn:
		c.Status, c.Reason = metav1.ConditionFalse, brokerv1.ReasonWithdrawn
		c.Message = fmt.Sprintf("The heartbeat Lease has not been renewed for over %v: the cluster's exports are withdrawn from every import until it renews.", a.cfg.WithdrawAfter)
	}
	return c
}

// heartbeat renews this cluster's Lease every third of its duration and
// keeps its Cluster record current (a write only when it changed).
func (a *Agent) heartbeat(ctx context.Context) {
	period := a.cfg.LeaseDuration / 3
	connected := true
	for {
		beat, cancel := context.WithTimeout(ctx, period)
		err := a.renewLease(beat)
		cancel()
		if err == nil {
			err = a.publishCluster(ctx)
		}
		if err != nil {
			if connected {
				a.log.Warn("lost the broker; imports keep their last state", "err", err)
			}
			if connected {
				a.link.Store(&brokerLink{up: false, since: time.Now()})
			}
			connected = false
			a.metrics.brokerConnected.Set(0)
		} else {
			if !connected && a.heartbeatOK.Load() {
				// Publish at once what was exported while the broker was
				// away, instead of waiting out each key's backoff.
				a.log.Info("broker reachable again; republishing exports")
				a.exportsAll()
			}
			if !connected || a.link.Load() == nil {
				a.link.Store(&brokerLink{up: true, since: time.Now()})
			}
			connected = true
			a.metrics.brokerConnected.Set(1)
			a.heartbeatOK.Store(true)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(period):
		}
	}
}

func (a *Agent) renewLease(ctx context.Context) error {
	api := a.cfg.Broker.CoordinationV1().Leases(a.cfg.BrokerNamespace)
	name := brokerv1.LeaseName(a.cfg.ClusterID)
	now := metav1.NowMicro()
	secs := int32(a.cfg.LeaseDuration / time.Second)
	l, err := api.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		holder := a.cfg.ClusterID
		_, err = api.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{brokerv1.LabelSourceCluster: a.cfg.ClusterID}},
			Spec:       coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &secs, AcquireTime: &now, RenewTime: &now},
		}, metav1.CreateOptions{FieldManager: fieldManager})
		a.countWrite("broker-lease", "create", err)
		return err
	}
	if err != nil {
		return fmt.Errorf("reading the heartbeat Lease: %w", err)
	}
	l.Spec.RenewTime, l.Spec.LeaseDurationSeconds = &now, &secs
	_, err = api.Update(ctx, l, metav1.UpdateOptions{FieldManager: fieldManager})
	a.countWrite("broker-lease", "update", err)
	if err != nil {
		return fmt.Errorf("renewing the heartbeat Lease: %w", err)
	}
	return nil
}

// publishCluster applies this cluster's record: its id, locality, address
// ranges and, in gateway mode, its gateway pods' addresses. The tunnel
// fields belong to the tunnel role, which applies them under its own field
// manager.
func (a *Agent) publishCluster(ctx context.Context) error {
	a.publishMu.Lock()
	defer a.publishMu.Unlock()
	rec := &brokerv1.Cluster{
		TypeMeta: metav1.TypeMeta{APIVersion: brokerv1.SchemeGroupVersion.String(), Kind: "Cluster"},
		ObjectMeta: metav1.ObjectMeta{Name: a.cfg.ClusterID, Namespace: a.cfg.BrokerNamespace,
			Labels: map[string]string{brokerv1.LabelSourceCluster: a.cfg.ClusterID}},
		Spec: brokerv1.ClusterSpec{
			ClusterID:    a.cfg.ClusterID,
			Region:       a.cfg.Region,
			Zone:         a.cfg.Zone,
			PodCIDRs:     a.cfg.PodCIDRs,
			ServiceCIDRs: a.cfg.ServiceCIDRs,
			Gateways:     a.gatewayAddresses(),
		},
	}
	if a.cfg.Version != "" {
		rec.Spec.Versions = map[string]string{"agent": a.cfg.Version}
	}
	hash := contentHash([]any{rec.Labels, rec.Spec})
	if cur, err := a.clusters.Clusters(rec.Namespace).Get(rec.Name); err == nil && cur.Annotations[annotationHash] == hash {
		return nil
	}
	rec.Annotations = map[string]string{annotationHash: hash}
	data, err := applyJSON(rec)
	if err != nil {
		return err
	}
	_, err = a.cfg.BrokerClient.BrokerV1alpha1().Clusters(a.cfg.BrokerNamespace).Patch(ctx, rec.Name, types.ApplyPatchType, data, patchOptions)
	a.countWrite("broker", "apply", err)
	if err != nil {
		return fmt.Errorf("publishing the Cluster record: %w", err)
	}
	return nil
}
