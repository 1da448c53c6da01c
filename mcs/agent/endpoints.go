package agent

import (
	"slices"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

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
func importSlice(src *discoveryv1.EndpointSlice, ns, name, cluster, derivedService string) *discoveryv1.EndpointSlice {
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
		TypeMeta:    metav1.TypeMeta{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice"},
		ObjectMeta:  metav1.ObjectMeta{Name: sliceName, Namespace: ns, Labels: labels},
		AddressType: src.AddressType,
		Endpoints:   src.Endpoints,
		Ports:       src.Ports,
	}
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
