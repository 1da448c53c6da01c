package agent

import (
	"slices"

	discoveryv1 "k8s.io/api/discovery/v1"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/merge"
)

// routePorts chooses, for each port of the import, the clusters its
// traffic goes to, among the clusters that serve it, and returns the
// port names routed to each cluster. An endpoint port is named for its
// Service port, and kube-proxy sends a derived Service port to every
// endpoint port of that name; a cluster whose Service gives the name
// another number or protocol than the import (it lost the port conflict
// to an older export), or lacks the port, does not serve it. Choosing per
// port keeps the locality policy for each: a port this cluster does not
// serve goes to the nearest cluster that does, though this cluster's own
// endpoints serve the others.
func routePorts(byCluster map[string][]*discoveryv1.EndpointSlice, exports []*brokerv1.ExportedService, merged []brokerv1.ServicePort,
	choose func(serving map[string][]*discoveryv1.EndpointSlice) []string) map[string]map[string]bool {
	routed := map[string]map[string]bool{}
	// Looked up once per cluster and port: a scan of every export each
	// time made this quadratic in the number of exporting clusters.
	exportOf := exportsByCluster(exports)
	for _, port := range merged {
		serving := map[string][]*discoveryv1.EndpointSlice{}
		for c, s := range byCluster {
			if e := exportOf[c]; e != nil && servesAs(e.Spec.Ports, merged, port.Name) {
				serving[c] = s
			}
		}
		if len(serving) == 0 {
			continue
		}
		for _, c := range choose(serving) {
			if routed[c] == nil {
				routed[c] = map[string]bool{}
			}
			routed[c][port.Name] = true
		}
	}
	return routed
}

// keepPorts are the endpoint ports of the names given.
func keepPorts(ports []discoveryv1.EndpointPort, names map[string]bool) []discoveryv1.EndpointPort {
	var out []discoveryv1.EndpointPort
	for _, p := range ports {
		if names[deref(p.Name)] {
			out = append(out, p)
		}
	}
	return out
}

// servesAs says whether the exported Service port called name is the
// import's port of that name.
func servesAs(exported, merged []brokerv1.ServicePort, name string) bool {
	for _, e := range exported {
		if e.Name != name {
			continue
		}
		for _, m := range merged {
			if m.Name == name {
				return m.Port == e.Port && merge.Protocol(m.Protocol) == merge.Protocol(e.Protocol)
			}
		}
	}
	return false
}

// exportsByCluster indexes exports by their cluster, the first of each
// cluster's.
func exportsByCluster(exports []*brokerv1.ExportedService) map[string]*brokerv1.ExportedService {
	m := make(map[string]*brokerv1.ExportedService, len(exports))
	for _, e := range exports {
		if _, dup := m[e.Spec.SourceCluster]; !dup {
			m[e.Spec.SourceCluster] = e
		}
	}
	return m
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
