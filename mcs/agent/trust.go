package agent

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// ConditionRecordsRefused on a ServiceImport is True while part of
// another member's records of the service is left out; its message says
// what and why. It is absent when nothing is.
const (
	ConditionRecordsRefused = "isthmus.dev/RecordsRefused"
	ReasonRecordsRefused    = "RecordsRefused"
)

// setRefusedCondition sets or clears ConditionRecordsRefused from what
// the plan left out, by exporting cluster.
func setRefusedCondition(st *mcsv1beta1.ServiceImportStatus, refused map[string][]string, generation int64) {
	if len(refused) == 0 {
		meta.RemoveStatusCondition(&st.Conditions, ConditionRecordsRefused)
		return
	}
	var reports []string
	for _, c := range slices.Sorted(maps.Keys(refused)) {
		reports = append(reports, refused[c]...)
	}
	msg := "Left out of this import: " + strings.Join(reports, "; ") +
		". The exporting cluster's agent or the broker's admission policy should have stopped this: check that member."
	if len(msg) > 2048 {
		msg = msg[:2045] + "..."
	}
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: ConditionRecordsRefused, Status: metav1.ConditionTrue,
		Reason: ReasonRecordsRefused, Message: msg, ObservedGeneration: generation})
}

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
			refused = append(refused, fmt.Sprintf("cluster %s: a slice of address type %.16s (only IPv4 and IPv6 are imported)", cluster, s.AddressType))
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
		if len(pods) == 0 {
			refused = append(refused, fmt.Sprintf("cluster %s: its Cluster record claims no pod CIDRs, so nothing routes to its endpoints %v", cluster, addrs))
		} else {
			refused = append(refused, fmt.Sprintf("cluster %s: endpoint addresses outside its pod CIDRs %v: %v", cluster, pods, addrs))
		}
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
	return brokerv1.EndpointAllowed(a, pods)
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
