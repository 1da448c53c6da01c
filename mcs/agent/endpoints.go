package agent

import (
	"slices"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// endpointsByCluster gathers, per exporting cluster, its endpoints of a
// service as one slice per address family. This cluster's own endpoints
// come from its local slices, so they stay current while the broker is
// away; the others' from the broker.
func (a *Agent) endpointsByCluster(ns, name string, clusters []string) map[string][]*discoveryv1.EndpointSlice {
	out := map[string][]*discoveryv1.EndpointSlice{}
	brokerSlices := a.brokerSlicesOf(ns, name)
	for _, c := range clusters {
		var src []*discoveryv1.EndpointSlice
		if c == a.cfg.ClusterID {
			if a.exportValid(ns, name) {
				for _, l := range a.localSlicesOf(ns, name) {
					src = append(src, a.brokerSlice(l))
				}
			}
		} else {
			for _, s := range brokerSlices {
				if s.Labels[brokerv1.LabelSourceCluster] == c {
					src = append(src, s)
				}
			}
		}
		out[c] = byFamily(src)
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

// byFamily merges slices into one per address family, endpoints in a
// stable order and ports the union.
func byFamily(src []*discoveryv1.EndpointSlice) []*discoveryv1.EndpointSlice {
	var out []*discoveryv1.EndpointSlice
	for _, fam := range []discoveryv1.AddressType{discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6} {
		merged := &discoveryv1.EndpointSlice{AddressType: fam}
		for _, s := range src {
			if s.AddressType != fam {
				continue
			}
			merged.Endpoints = append(merged.Endpoints, s.Endpoints...)
			for _, p := range s.Ports {
				if !slices.ContainsFunc(merged.Ports, func(q discoveryv1.EndpointPort) bool { return samePort(p, q) }) {
					merged.Ports = append(merged.Ports, p)
				}
			}
		}
		if len(merged.Endpoints) == 0 {
			continue
		}
		slices.SortFunc(merged.Endpoints, func(x, y discoveryv1.Endpoint) int {
			return cmpStrings(x.Addresses, y.Addresses)
		})
		out = append(out, merged)
	}
	return out
}

func samePort(p, q discoveryv1.EndpointPort) bool {
	return deref(p.Name) == deref(q.Name) && derefInt(p.Port) == derefInt(q.Port) && deref((*string)(p.Protocol)) == deref((*string)(q.Protocol))
}

// importSlice is one cluster's endpoints of one family, written into this
// cluster for an import: for the ServiceImport itself (derivedService
// empty; the MCS slice that DNS and other consumers read) or for its
// derived Service (what kube-proxy programs).
func importSlice(src *discoveryv1.EndpointSlice, ns, name, cluster, derivedService string, owner metav1.OwnerReference) *discoveryv1.EndpointSlice {
	labels := map[string]string{
		brokerv1.LabelSourceCluster: cluster,
		discoveryv1.LabelManagedBy:  brokerv1.ManagedBy,
		mcsv1beta1.LabelServiceName: name,
		labelSliceRole:              roleMCS,
	}
	sliceName := importSliceName(name, cluster, src.AddressType)
	if derivedService != "" {
		// Not an MCS slice: it must not carry the MCS service label, or DNS
		// would count its endpoints twice.
		delete(labels, mcsv1beta1.LabelServiceName)
		labels[labelDerivedFor] = name
		labels[labelSliceRole] = roleDerived
		labels[discoveryv1.LabelServiceName] = derivedService
		sliceName = importSliceName(derivedService, cluster, src.AddressType)
	}
	return &discoveryv1.EndpointSlice{
		TypeMeta: metav1.TypeMeta{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice"},
		ObjectMeta: metav1.ObjectMeta{Name: sliceName, Namespace: ns, Labels: labels,
			OwnerReferences: []metav1.OwnerReference{owner}},
		AddressType: src.AddressType,
		Endpoints:   src.Endpoints,
		Ports:       src.Ports,
	}
}

// localityOf is the winning export's locality policy.
func localityOf(exports []*brokerv1.ExportedService, winner string) string {
	for _, e := range exports {
		if e.Spec.SourceCluster == winner {
			switch p := e.Annotations[brokerv1.AnnotationLocality]; p {
			case LocalitySpread, LocalityRemoteFirst:
				return p
			}
		}
	}
	return LocalityLocal
}

// chooseClusters picks whose endpoints the derived Service gets, by the
// locality policy: local keeps traffic here while any local endpoint is
// ready and otherwise goes to the nearest region with ready endpoints;
// spread uses every cluster; remote-first prefers the nearest other
// clusters and falls back to this one. Other clusters that are
// unreachable now (see unreachable) get no traffic while a reachable one
// has ready endpoints; they stay in the import until withdrawn.
func (a *Agent) chooseClusters(byCluster map[string][]*discoveryv1.EndpointSlice, policy string) []string {
	var all, remote []string
	down := map[string]bool{} // judged once per call: it reads the Leases and this cluster's record
	for c := range byCluster {
		all = append(all, c)
		down[c] = a.unreachable(c)
		if c != a.cfg.ClusterID && anyReady(byCluster[c]) {
			remote = append(remote, c)
		}
	}
	slices.Sort(all)
	slices.Sort(remote)
	isDown := func(c string) bool { return down[c] }
	if up := slices.DeleteFunc(slices.Clone(remote), isDown); len(up) > 0 {
		remote = up
	}
	localReady := anyReady(byCluster[a.cfg.ClusterID])
	nearest := a.nearest(remote)
	switch {
	case policy == LocalitySpread:
		if up := slices.DeleteFunc(slices.Clone(all), isDown); slices.ContainsFunc(up, func(c string) bool { return anyReady(byCluster[c]) }) {
			return up
		}
		return all
	case policy == LocalityRemoteFirst && len(nearest) > 0:
		return nearest
	case policy == LocalityRemoteFirst:
		return []string{a.cfg.ClusterID}
	case localReady:
		return []string{a.cfg.ClusterID}
	case len(nearest) > 0:
		return nearest
	default:
		// Nothing is ready anywhere: keep every endpoint listed, so that
		// readiness flips are all that is needed to recover.
		return all
	}
}

// nearest keeps the clusters in this cluster's region when there are any.
func (a *Agent) nearest(clusters []string) []string {
	if a.cfg.Region == "" {
		return clusters
	}
	var same []string
	for _, c := range clusters {
		if a.regionOf(c) == a.cfg.Region {
			same = append(same, c)
		}
	}
	if len(same) > 0 {
		return same
	}
	return clusters
}

func (a *Agent) regionOf(cluster string) string {
	rec, err := a.clusters.Clusters(a.cfg.BrokerNamespace).Get(cluster)
	if err != nil {
		return ""
	}
	return rec.Spec.Region
}

func anyReady(slices []*discoveryv1.EndpointSlice) bool {
	for _, s := range slices {
		for _, e := range s.Endpoints {
			if e.Conditions.Ready == nil || *e.Conditions.Ready {
				return true
			}
		}
	}
	return false
}

func cmpStrings(x, y []string) int {
	return slices.Compare(x, y)
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func derefInt(p *int32) int32 {
	if p == nil {
		return 0
	}
	return *p
}
