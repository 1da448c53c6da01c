package agent

import (
	"context"

	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// syncImport brings one service's import in this cluster in line with
// every live cluster's export records: the ServiceImport, its derived
// Service and their EndpointSlices. It gathers the plan's input from the
// caches, plans (plan.go) and applies the plan (apply.go).
func (a *Agent) syncImport(ctx context.Context, key string) error {
	ns, name, err := cutKey(key)
	if err != nil {
		return nil
	}
	if _, err := a.namespaces.Get(ns); apierrors.IsNotFound(err) {
		a.releaseEgress(key) // its ServiceImport went with the namespace
		return nil           // imported only where the namespace exists
	}
	p := planImport(a.importInput(ns, name))
	if p.Remove {
		return a.removeImport(ctx, ns, name)
	}
	return a.applyImport(ctx, p)
}

// importInput gathers what the plan of one service's import reads: every
// cluster's records of it, how each exporting cluster stands, and the
// derived Service as it stands here.
func (a *Agent) importInput(ns, name string) importInput {
	in := importInput{Namespace: ns, Name: name, Local: a.cfg.ClusterID, Region: a.cfg.Region,
		Exports:    a.exportsOf(ns, name),
		Endpoints:  map[string][]*discoveryv1.EndpointSlice{},
		Clusters:   map[string]clusterState{},
		Derived:    a.cachedDerived(ns, derivedServiceName(name)),
		Gateway:    a.importGateway(),
		Capped:     map[string]bool{},
		MaxImports: a.cfg.MaxImportsPerCluster,
		Families:   a.families,
		// Gateway mode reaches other clusters' endpoints only through
		// their own gateways.
		TrustUnclaimed: a.gatewayMode(),
	}
	// Grouped by source once: scanning every slice for each cluster made
	// a reconcile quadratic in the number of exporting clusters.
	brokerSlices := map[string][]*discoveryv1.EndpointSlice{}
	for _, s := range a.brokerSlicesOf(ns, name) {
		c := s.Labels[brokerv1.LabelSourceCluster]
		brokerSlices[c] = append(brokerSlices[c], s)
	}
	key := ns + "/" + name
	ranked := in.Exports[:0]
	for _, e := range in.Exports {
		switch a.caps.standing(e.Spec.SourceCluster, key) {
		case inCap:
			ranked = append(ranked, e)
		case overCap:
			ranked = append(ranked, e)
			in.Capped[e.Spec.SourceCluster] = true
		}
		// Unranked: its informer event, on its way, queues this key again.
	}
	in.Exports = ranked
	for _, e := range in.Exports {
		c := e.Spec.SourceCluster
		if _, seen := in.Clusters[c]; seen || in.Capped[c] {
			continue
		}
		// Judged once per sync: each reads the Leases and this cluster's
		// record.
		in.Clusters[c] = a.clusterState(c)
		in.Endpoints[c] = a.endpointsOf(ns, name, c, brokerSlices[c])
	}
	return in
}

// endpointsOf are one exporting cluster's EndpointSlices of a service.
// This cluster's own come from its local slices, so they stay current
// while the broker is away; the others' are its broker slices, given.
func (a *Agent) endpointsOf(ns, name, cluster string, brokerSlices []*discoveryv1.EndpointSlice) []*discoveryv1.EndpointSlice {
	if cluster != a.cfg.ClusterID {
		return brokerSlices
	}
	var out []*discoveryv1.EndpointSlice
	if a.exportValid(ns, name) {
		for _, l := range a.localSlicesOf(ns, name) {
			out = append(out, a.brokerSlice(l))
		}
	}
	return out
}

// exportValid reports whether this cluster exports namespace/name now.
func (a *Agent) exportValid(ns, name string) bool {
	if _, err := a.serviceExports.ServiceExports(ns).Get(name); err != nil {
		return false
	}
	svc, err := a.services.Services(ns).Get(name)
	return err == nil && svc.Spec.Type != "ExternalName"
}

// clusterState is how an exporting cluster stands: its health and
// reachability, and what its Cluster record claims (its region, its pod
// ranges as brokerv1.CheckClaim allows them, when it joined).
func (a *Agent) clusterState(cluster string) clusterState {
	st := clusterState{Health: a.healthOf(cluster), Unreachable: a.unreachable(cluster)}
	rec, err := a.clusters.Clusters(a.cfg.BrokerNamespace).Get(cluster)
	if err != nil {
		return st
	}
	st.Region, st.Joined = rec.Spec.Region, rec.CreationTimestamp.Time
	if len(rec.Spec.PodCIDRs) > 0 {
		st.Claimed = true
		// A refused range is the tunnel's to report (it gets no route);
		// here it only covers no endpoint.
		st.PodCIDRs, _ = brokerv1.ParseClaims(rec.Spec.PodCIDRs, nil, nil)
	}
	return st
}
