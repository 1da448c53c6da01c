package agent

import (
	"fmt"
	"net/netip"
	"slices"

	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

// What an importer takes from another member's EndpointSlices. Another
// member's records are hostile input (docs/security.md): an address is
// taken only inside the pod ranges the member claims (its Cluster record's
// podCIDRs, which the broker's admission holds to the hub's allowlist and
// brokerv1.CheckClaim to the fixed rules), and an endpoint keeps only the
// fields an importer needs. A node name, a target reference or topology
// hints from another cluster would mean something else here (kube-proxy
// prefers endpoints on "its" node), so they never cross.

// maxEndpointsPerCluster bounds what one member may make this cluster
// write and route for one service: ten of Kubernetes' default-sized
// slices. A member over it has the rest of its endpoints left out, and the
// ServiceImport says so.
const maxEndpointsPerCluster = 1000

// takeEndpoints rebuilds one exporting cluster's slices from the fields
// an importer may take, leaving out every address outside pods and every
// endpoint past maxEndpointsPerCluster. It returns what it left out, as a
// person should read it; refused is empty when nothing was.
func takeEndpoints(cluster string, src []*discoveryv1.EndpointSlice, pods []netip.Prefix) (out []*discoveryv1.EndpointSlice, refused []string) {
	taken := 0
	outside := map[string]bool{}
	over := 0
	for _, s := range src {
		if s.AddressType != discoveryv1.AddressTypeIPv4 && s.AddressType != discoveryv1.AddressTypeIPv6 {
			refused = append(refused, fmt.Sprintf("cluster %s: a slice of address type %s (only IPv4 and IPv6 are imported)", cluster, s.AddressType))
			continue
		}
		clean := &discoveryv1.EndpointSlice{AddressType: s.AddressType}
		for _, p := range s.Ports {
			clean.Ports = append(clean.Ports, discoveryv1.EndpointPort{Name: p.Name, Protocol: p.Protocol, Port: p.Port, AppProtocol: p.AppProtocol})
		}
		for _, e := range s.Endpoints {
			var addrs []string
			for _, a := range e.Addresses {
				if ok := addressTaken(a, s.AddressType, pods); ok {
					addrs = append(addrs, a)
				} else {
					outside[a] = true
				}
			}
			if len(addrs) == 0 {
				continue
			}
			if taken >= maxEndpointsPerCluster {
				over++
				continue
			}
			taken++
			clean.Endpoints = append(clean.Endpoints, discoveryv1.Endpoint{
				Addresses:  addrs,
				Conditions: e.Conditions,
				Hostname:   validHostname(e.Hostname),
				Zone:       e.Zone,
			})
		}
		if len(clean.Endpoints) > 0 {
			out = append(out, clean)
		}
	}
	if len(outside) > 0 {
		addrs := make([]string, 0, len(outside))
		for a := range outside {
			addrs = append(addrs, a)
		}
		slices.Sort(addrs)
		if len(addrs) > 5 {
			addrs = append(addrs[:5], fmt.Sprintf("and %d more", len(outside)-5))
		}
		refused = append(refused, fmt.Sprintf("cluster %s: endpoint addresses outside its pod CIDRs %v: %v", cluster, pods, addrs))
	}
	if over > 0 {
		refused = append(refused, fmt.Sprintf("cluster %s: %d endpoints over the limit of %d per cluster", cluster, over, maxEndpointsPerCluster))
	}
	return out, refused
}

// addressTaken: a canonical address of the slice's family, inside pods.
func addressTaken(s string, family discoveryv1.AddressType, pods []netip.Prefix) bool {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" || a.String() != s {
		return false
	}
	if (family == discoveryv1.AddressTypeIPv4) != a.Is4() {
		return false
	}
	for _, p := range pods {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// validHostname keeps a hostname DNS can serve as a label (the per-pod
// names of headless imports) and drops anything else.
func validHostname(h *string) *string {
	if h == nil || len(validation.IsDNS1123Label(*h)) > 0 {
		return nil
	}
	v := *h
	return &v
}
