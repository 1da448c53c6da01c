package agent

import (
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// servedPorts are the ports of one exporting cluster's endpoints that
// serve the import's ports: an endpoint port is named for its Service
// port, and kube-proxy sends a derived Service port to every endpoint
// port of that name. A cluster whose Service gives the name another
// number or protocol than the import (it lost the port conflict to an
// older export) does not serve that port, so its endpoint port is left
// out, and the port's traffic goes only to the clusters that expose it.
func servedPorts(ports []discoveryv1.EndpointPort, export *brokerv1.ExportedService, merged []brokerv1.ServicePort) []discoveryv1.EndpointPort {
	if export == nil {
		return ports
	}
	var out []discoveryv1.EndpointPort
	for _, p := range ports {
		name := deref(p.Name)
		if servesAs(export.Spec.Ports, merged, name) {
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
				return m.Port == e.Port && protocol(m.Protocol) == protocol(e.Protocol)
			}
		}
	}
	return false
}

// protocol is p, TCP when empty (the API's default).
func protocol(p corev1.Protocol) corev1.Protocol {
	if p == "" {
		return corev1.ProtocolTCP
	}
	return p
}
