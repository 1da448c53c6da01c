package tunnel

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/tools/cache"

	"github.com/isthmus-dev/isthmus/mcs/api/broker/records"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// dirtySet is the names of the records whose events arrived since the
// last pass.
type dirtySet struct {
	mu    sync.Mutex
	names map[string]bool
}

func (d *dirtySet) add(name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.names == nil {
		d.names = map[string]bool{}
	}
	d.names[name] = true
}

func (d *dirtySet) take() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]string, 0, len(d.names))
	for n := range d.names {
		out = append(out, n)
	}
	d.names = nil
	slices.Sort(out)
	return out
}

// ownFacts is what this cluster's own record says that the plan and the
// device depend on.
type ownFacts struct {
	present    bool
	pods, svcs string
}

func ownFactsOf(own *brokerv1.Cluster) ownFacts {
	if own == nil {
		return ownFacts{}
	}
	return ownFacts{present: true, pods: joinStrings(own.Spec.PodCIDRs), svcs: joinStrings(own.Spec.ServiceCIDRs)}
}

// publishedOK says whether own carries this gateway's key and endpoint.
func (t *Tunnel) publishedOK(own *brokerv1.Cluster) bool {
	t.mu.Lock()
	pub := t.pub
	t.mu.Unlock()
	return own != nil && own.Spec.WireGuard != nil && own.Spec.WireGuard.PublicKey == pub.String() &&
		own.Spec.WireGuard.Endpoint == t.cfg.Endpoint.String()
}

// fullPass reads every record, plans them all, and brings the device and
// the routes to the plan from what they actually hold.
func (t *Tunnel) fullPass(ctx context.Context, rec *reconciler, inf cache.SharedIndexInformer, echo *echoState) error {
	records, skipped := t.records.decode(inf.GetStore())
	for _, err := range skipped {
		t.log.Warn("leaving out a broker record: no peer and no route for it", "err", err)
	}
	t.mu.Lock()
	local := Local{Cluster: t.cfg.ClusterID, PublicKey: t.pub}
	t.mu.Unlock()
	var err error
	if local.Protected, err = nodeNetworks(t.cfg.Device); err != nil {
		return fmt.Errorf("reading this node's networks, which no peer may claim: %w", err)
	}
	var own *brokerv1.Cluster
	for i := range records {
		if records[i].Name == t.cfg.ClusterID {
			own = &records[i]
		}
	}
	var addr netip.Addr
	if own != nil {
		if local.PodCIDRs, err = parsePrefixes(own.Spec.PodCIDRs); err != nil {
			return fmt.Errorf("this cluster's own record: pod %w", err)
		}
		if local.ServiceCIDRs, err = parsePrefixes(own.Spec.ServiceCIDRs); err != nil {
			return fmt.Errorf("this cluster's own record: service %w", err)
		}
		if len(local.PodCIDRs) > 0 {
			addr = TunnelAddress(local.PodCIDRs[0])
		}
	}
	t.own = ownFactsOf(own)
	if !t.publishedOK(own) {
		// Not published yet, changed by someone else, or the record was
		// deleted and must be recreated.
		if err := t.publishSpec(ctx); err != nil {
			return err
		}
	}
	var ip []byte
	if addr.IsValid() {
		ip = addr.AsSlice()
	}
	link, err := linkUp(t.cfg.Device, ip)
	if err != nil {
		return err
	}
	// Every full pass, so that a rule removed by hand comes back.
	if err := rec.ensureRules(t.cfg.RulePriority, link); err != nil {
		return err
	}
	t.plan.reset(local, records)
	peers := make([]Peer, 0, len(t.plan.peers))
	for _, p := range t.plan.peers {
		peers = append(peers, p)
	}
	slices.SortFunc(peers, func(a, b Peer) int { return strings.Compare(a.Cluster, b.Cluster) })
	ch, applyErr := rec.apply(link, addr, peers, inf.HasSynced())
	if applyErr != nil {
		t.metrics.reconcileErrors.WithLabelValues("peer_or_route").Inc()
	}
	// Only the peers that made it onto the device count as configured.
	var configured []Peer
	configuredBy := map[string]Peer{}
	for _, p := range peers {
		if rec.configured(p) {
			configured = append(configured, p)
			configuredBy[p.Cluster] = p
		}
	}
	t.health.sync(configured, time.Now())
	verdicts := make(map[string]Verdict, len(t.plan.verdicts))
	for c, v := range t.plan.verdicts {
		verdicts[c] = v
		if v.State != "" && v.State != StatePending {
			t.log.Warn("remote cluster not peered", "cluster", v.Cluster, "state", v.State, "reason", v.Reason)
		}
	}
	t.mu.Lock()
	t.peers, t.verdicts = configuredBy, verdicts
	t.mu.Unlock()
	if ch.any() {
		t.log.Info("tunnel reconciled", "pass", "full", "peersAdded", ch.added, "peersUpdated", ch.updated, "peersRemoved", ch.removed,
			"routesAdded", ch.routesAdded, "routesRemoved", ch.routesRemoved)
	}
	if !addr.IsValid() {
		return errors.Join(applyErr, errors.New("this cluster's record has no pod CIDRs yet, so the tunnel has no address"))
	}
	if err := echo.ensure(ctx, netip.AddrPortFrom(addr, uint16(t.cfg.ProbePort)), t.log); err != nil {
		return errors.Join(applyErr, err)
	}
	return applyErr
}

// changePass applies the records named: each one's plan is updated alone
// (planner.update) and only the peers and routes whose plan changed are
// written, from the reconciler's model, without reading the device or the
// routing table. It asks for a full pass (redo) when this cluster's own
// CIDRs changed.
func (t *Tunnel) changePass(ctx context.Context, rec *reconciler, store cache.Store, names []string) (redo bool, err error) {
	var changed []string
	for _, name := range names {
		r, err := decodeOne(store, t.cfg.BrokerNamespace, name)
		if err != nil {
			return false, err
		}
		if name == t.cfg.ClusterID {
			if ownFactsOf(r) != t.own {
				return true, nil
			}
			if !t.publishedOK(r) {
				if err := t.publishSpec(ctx); err != nil {
					return false, err
				}
			}
			continue
		}
		changed = append(changed, t.plan.update(name, r)...)
	}
	if len(changed) == 0 {
		return false, nil
	}
	slices.Sort(changed)
	changed = slices.Compact(changed)
	t.mu.Lock()
	var old, next []Peer
	for _, c := range changed {
		if p, ok := t.peers[c]; ok {
			old = append(old, p)
		}
		if p, ok := t.plan.peers[c]; ok {
			next = append(next, p)
		}
	}
	t.mu.Unlock()
	ch, applyErr := rec.applyChanges(old, next)
	if applyErr != nil {
		t.metrics.reconcileErrors.WithLabelValues("peer_or_route").Inc()
	}
	now := time.Now()
	t.mu.Lock()
	for _, c := range changed {
		p, planned := t.plan.peers[c]
		configured := planned && rec.configured(p)
		if configured {
			t.peers[c] = p
		} else {
			delete(t.peers, c)
		}
		t.health.update(c, configured, now)
		if v, ok := t.plan.verdicts[c]; ok {
			t.verdicts[c] = v
		} else {
			delete(t.verdicts, c)
		}
	}
	t.mu.Unlock()
	for _, c := range changed {
		if v, ok := t.plan.verdicts[c]; ok && v.State != "" && v.State != StatePending {
			t.log.Warn("remote cluster not peered", "cluster", v.Cluster, "state", v.State, "reason", v.Reason)
		}
	}
	if ch.any() {
		t.log.Info("tunnel reconciled", "pass", "change", "clusters", changed, "peersAdded", ch.added, "peersUpdated", ch.updated,
			"peersRemoved", ch.removed, "routesAdded", ch.routesAdded, "routesRemoved", ch.routesRemoved)
	}
	return false, applyErr
}

// decodeOne reads one record from the informer's store; nil when it is
// gone.
func decodeOne(store cache.Store, namespace, name string) (*brokerv1.Cluster, error) {
	obj, ok, err := store.GetByKey(namespace + "/" + name)
	if err != nil {
		return nil, fmt.Errorf("reading cluster record %s from the cache: %w", name, err)
	}
	if !ok {
		return nil, nil
	}
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return nil, fmt.Errorf("cluster record %s is a %T", name, obj)
	}
	var c brokerv1.Cluster
	if err := records.Decode(u, &c); err != nil {
		// As if gone: the full pass leaves it out and says why.
		return nil, nil
	}
	return &c, nil
}
