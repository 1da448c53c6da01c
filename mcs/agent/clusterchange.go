package agent

import (
	"slices"
	"time"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// A Cluster record changes far more often than anything an import reads
// from it: the tunnel role rewrites its status as probes come and go, and
// Heartbeat conditions land in it. With N members, requeueing every import
// on every such write costs N × imports reconciles per write in every
// agent. So a record's change queues only the imports of the clusters
// whose plan input it moved (clusterState and unreachable in import.go):
//
//   - an exporting cluster's record: its region, its pod ranges, when it
//     joined, or the record appearing or going;
//   - this cluster's own record: which peers its tunnel reports in Error or
//     Conflict (Reachability), besides the above for its own exports.

const byCluster = "byCluster"

// clusterIndex files a broker export under its source cluster, so that a
// change to one cluster's standing queues only that cluster's services.
func clusterIndex(obj any) ([]string, error) {
	if e, ok := obj.(*brokerv1.ExportedService); ok {
		return []string{e.Spec.SourceCluster}, nil
	}
	return nil, nil
}

// clustersMoved names the clusters whose imports a change of one Cluster
// record (old or cur nil for an add or a delete) can move, as seen by
// cluster local. It is pure: the informer handler calls it with the two
// versions the watch delivered.
func clustersMoved(old, cur *brokerv1.Cluster, local string) []string {
	rec := cur
	if rec == nil {
		rec = old
	}
	if rec == nil {
		return nil
	}
	var out []string
	if old == nil || cur == nil || old.Spec.Region != cur.Spec.Region || !slices.Equal(old.Spec.PodCIDRs, cur.Spec.PodCIDRs) ||
		!old.CreationTimestamp.Equal(&cur.CreationTimestamp) {
		out = append(out, rec.Spec.ClusterID)
	}
	if rec.Spec.ClusterID != local {
		return out
	}
	was, is := tunnelDown(old), tunnelDown(cur)
	for peer := range was {
		if !is[peer] {
			out = append(out, peer)
		}
	}
	for peer := range is {
		if !was[peer] {
			out = append(out, peer)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// tunnelDown is the set of peers a record's tunnel status makes
// unreachable, by the rule of brokerv1.Reachability.
func tunnelDown(rec *brokerv1.Cluster) map[string]bool {
	out := map[string]bool{}
	if rec == nil || rec.Status.Tunnel == nil {
		return out
	}
	for _, p := range rec.Status.Tunnel.Peers {
		if reachable, _ := brokerv1.Reachability(brokerv1.Healthy, rec, p.Cluster); !reachable {
			out[p.Cluster] = true
		}
	}
	return out
}

// clusterChanged queues the imports a Cluster record's change can move,
// after giving the import cap's ranking the cluster's join time.
func (a *Agent) clusterChanged(old, cur any) {
	rec := func(o any) *brokerv1.Cluster {
		c, _ := unwrap(o).(*brokerv1.Cluster)
		return c
	}
	if r := rec(cur); r != nil {
		a.capsChanged(r.Spec.ClusterID, a.caps.setJoined(r.Spec.ClusterID, r.CreationTimestamp.Time))
	} else if r := rec(old); r != nil {
		a.capsChanged(r.Spec.ClusterID, a.caps.setJoined(r.Spec.ClusterID, time.Time{}))
	}
	a.importsOf(clustersMoved(rec(old), rec(cur), a.cfg.ClusterID)...)
}

// importsOf queues every service the given clusters export.
func (a *Agent) importsOf(clusters ...string) {
	for _, c := range clusters {
		objs, _ := a.brokerExports.ByIndex(byCluster, c)
		for _, o := range objs {
			e := o.(*brokerv1.ExportedService)
			a.imports.enqueue(e.Spec.ServiceNamespace + "/" + e.Spec.ServiceName)
		}
	}
}
