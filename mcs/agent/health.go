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

// Reachability is judged by the rule of mcs/api (brokerv1.HeartbeatClock
// and brokerv1.Reachability), the one the xDS server uses too, so that an
// import and a gateway never disagree about a cluster. Each peer's Lease
// is judged by its own leaseDurationSeconds and by when this agent saw it
// renewed, never by the renewTime the peer wrote.

// observeLease feeds the heartbeat clock every Lease the informer delivers,
// and forgets the cluster of a deleted one.
func (a *Agent) observeLease(obj any, deleted bool) {
	l, ok := unwrap(obj).(*coordinationv1.Lease)
	if !ok {
		return
	}
	if deleted {
		a.heartbeats.Forget(l.Labels[brokerv1.LabelSourceCluster])
		a.recheckHealth()
		return
	}
	a.heartbeats.Observe(l, time.Now())
	// Only this Lease's cluster: a renewal changes no other cluster's
	// health, and judging all N on each of N renewals a period made the
	// agents' idle CPU grow with N² (the 1 s tick judges all).
	a.recheckHealth(l.Labels[brokerv1.LabelSourceCluster])
}

// healthOf judges a cluster's heartbeat. This cluster is always healthy to
// itself, and a cluster never seen heartbeating has not started yet, which
// is no reason to drop its exports. A peer's silence only counts while
// this agent itself reaches the broker (the link): when the broker is
// away, nothing is learned about the peers, so their health is frozen as
// of the moment the broker was lost; after it returns, each peer is given
// a full period to renew again.
func (a *Agent) healthOf(cluster string) brokerv1.Health {
	h, _ := a.judge(cluster)
	return h
}

// judge is healthOf with the time until that judgement would change (a
// heartbeat lapsing, a lapsed one withdrawn) though no Lease arrives; 0
// when none is due.
func (a *Agent) judge(cluster string) (brokerv1.Health, time.Duration) {
	if cluster == a.cfg.ClusterID {
		return brokerv1.Healthy, 0
	}
	return a.heartbeats.Judge(cluster, a.link.Load(), time.Now(), a.cfg.WithdrawAfter)
}

// unreachable reports whether traffic to cluster should go elsewhere now:
// its heartbeat has lapsed, or this cluster's own tunnel reports the data
// path to it down (the peer in Error or Conflict in this cluster's record).
// With the default 30 s Lease the tunnel's probes (3 lost, one a second)
// say it first.
func (a *Agent) unreachable(cluster string) bool {
	if cluster == a.cfg.ClusterID {
		return false
	}
	local, err := a.clusters.Clusters(a.cfg.BrokerNamespace).Get(a.cfg.ClusterID)
	if err != nil {
		local = nil
	}
	reachable, _ := brokerv1.Reachability(a.healthOf(cluster), local, cluster)
	return !reachable
}

// recheckHealth recomputes the health of the given clusters, or of every
// cluster with a Lease when none is given, and queues the imports of the
// clusters whose health changed. It returns how long until the soonest
// of their judgements is due to change (0 when none is).
func (a *Agent) recheckHealth(only ...string) time.Duration {
	clusters := only
	if len(only) == 0 {
		for _, o := range a.leases.List() {
			clusters = append(clusters, o.(*coordinationv1.Lease).Labels[brokerv1.LabelSourceCluster])
		}
	}
	var changed []string
	var soonest time.Duration
	a.healthMu.Lock()
	for _, cluster := range clusters {
		if cluster == "" || cluster == a.cfg.ClusterID {
			continue
		}
		h, next := a.judge(cluster)
		if next > 0 && (soonest == 0 || next < soonest) {
			soonest = next
		}
		if old, seen := a.health[cluster]; !seen || old != h {
			if seen {
				a.log.Info("cluster health changed", "peer", cluster, "from", old, "to", h)
			}
			a.health[cluster] = h
			changed = append(changed, cluster)
		}
	}
	a.healthMu.Unlock()
	a.importsOf(changed...)
	return soonest
}

// watchHealth rechecks health as time passes, since a Lease that stops
// being renewed sends no event: when the soonest judgement is due to
// change, so that a lapsed heartbeat moves traffic and a withdrawal
// happens at its time and not up to a tick later (and together with the
// xDS server, which judges by the same rule at the same moments), and
// every second besides, which also reports health to the broker and
// learns of clusters first seen since (every is the agent's 1 s).
func (a *Agent) watchHealth(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	due := time.NewTimer(time.Hour)
	due.Stop()
	defer due.Stop()
	tick := false
	for {
		// A renewal since only pushes a cluster's due time later, so the
		// timer is never late, only sometimes early: a recheck for nothing.
		// Past the boundary by a little, as the judgement is strict.
		if next := a.recheckHealth(); next > 0 {
			due.Reset(next + 10*time.Millisecond)
		}
		if tick {
			a.reportHealth(ctx)
		}
		select {
		case <-ctx.Done():
			return
		case <-due.C:
			tick = false
		case <-t.C:
			tick = true
		}
	}
}

// reportHealth writes, into each Cluster record whose Heartbeat condition
// no longer says what this agent observes, the condition it observes, when
// this agent is the clusterset's health writer (healthWriter). Every member
// computes the same health from the same Leases; were each to write it,
// a lapse among N members would cost N writes to each lapsed record, and
// the first sight of N records N² writes. Nothing is written while the
// broker is unreachable.
func (a *Agent) reportHealth(ctx context.Context) {
	if link := a.link.Load(); link == nil || !link.Up {
		return
	}
	recs, _ := a.clusters.Clusters(a.cfg.BrokerNamespace).List(everything)
	ids := make([]string, 0, len(recs))
	for _, rec := range recs {
		ids = append(ids, rec.Spec.ClusterID)
	}
	if healthWriter(ids, a.cfg.ClusterID, func(c string) bool { return a.healthOf(c) == brokerv1.Healthy }) != a.cfg.ClusterID {
		return
	}
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

// healthWriter names the one member that writes Heartbeat conditions: the
// first, in cluster-id order, of the members with a record that the
// observer judges healthy (the observer always is, to itself). Members
// that see the same Leases name the same writer; when it lapses, the next
// one takes over within a health check. Two may briefly both write while
// their views differ (one has not yet seen a renewal); that ends as their
// views converge, within a Lease period.
func healthWriter(ids []string, self string, healthy func(string) bool) string {
	writer := self
	for _, id := range ids {
		if id < writer && id != self && healthy(id) {
			writer = id
		}
	}
	return writer
}

// heartbeatCondition is the Heartbeat condition for a health. It names no
// Lease duration: each cluster chooses its own, and every member must
// write the same words or they would overwrite each other.
func (a *Agent) heartbeatCondition(h brokerv1.Health) metav1.Condition {
	c := metav1.Condition{Type: brokerv1.ClusterConditionHeartbeat, Status: metav1.ConditionTrue, Reason: brokerv1.ReasonLeaseRenewed,
		Message: "The cluster renews its heartbeat Lease."}
	switch h {
	case brokerv1.Lapsed:
		c.Status, c.Reason = metav1.ConditionFalse, brokerv1.ReasonLeaseExpired
		c.Message = fmt.Sprintf("The heartbeat Lease has not been renewed within its duration: check the cluster's isthmus agent and its access to the broker. Its exports stay imported until %v without renewal.",
			a.cfg.WithdrawAfter)
	case brokerv1.Withdrawn:
		c.Status, c.Reason = metav1.ConditionFalse, brokerv1.ReasonWithdrawn
		c.Message = fmt.Sprintf("The heartbeat Lease has not been renewed for over %v: the cluster's exports are withdrawn from every import until it renews.", a.cfg.WithdrawAfter)
	}
	return c
}

// heartbeat renews this cluster's Lease every third of its duration and
// keeps its Cluster record current (a write only when it changed). It
// closes linked once the first attempt has set the link to the broker.
func (a *Agent) heartbeat(ctx context.Context, linked chan<- struct{}) {
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
				a.link.Store(&brokerv1.BrokerLink{Up: false, Since: time.Now()})
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
			switch {
			case a.link.Load() == nil:
				// The first connection is no return from an outage: the
				// peers' Leases as first found say how long they have
				// been silent (brokerv1.HeartbeatClock).
				a.link.Store(&brokerv1.BrokerLink{Up: true})
			case !connected:
				a.link.Store(&brokerv1.BrokerLink{Up: true, Since: time.Now()})
			}
			connected = true
			a.metrics.brokerConnected.Set(1)
			a.heartbeatOK.Store(true)
		}
		if linked != nil {
			close(linked)
			linked = nil
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(period):
		}
	}
}

// renewLease renews this cluster's Lease: one update, from the informer's
// copy when it has one (no read first), else read and update as before.
func (a *Agent) renewLease(ctx context.Context) error {
	api := a.cfg.Broker.CoordinationV1().Leases(a.cfg.BrokerNamespace)
	name := brokerv1.LeaseName(a.cfg.ClusterID)
	now := metav1.NowMicro()
	secs := int32(a.cfg.LeaseDuration / time.Second)
	if o, ok, _ := a.leases.GetByKey(a.cfg.BrokerNamespace + "/" + name); ok {
		l := o.(*coordinationv1.Lease).DeepCopy()
		l.Spec.RenewTime, l.Spec.LeaseDurationSeconds = &now, &secs
		_, err := api.Update(ctx, l, metav1.UpdateOptions{FieldManager: fieldManager})
		a.countWrite("broker-lease", "update", err)
		if err == nil {
			return nil
		}
		if !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
			return fmt.Errorf("renewing the heartbeat Lease: %w", err)
		}
		// The cache lagged behind the broker: read it afresh.
	}
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
