package dnsserver

import (
	"net/netip"
	"slices"
	"strings"

	discoveryv1 "k8s.io/api/discovery/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
)

// The Builder keeps what it compiles from, to recompile a service when one
// of its objects changes. At 100,000 services the API objects (even with
// managed fields and annotations dropped) took about as much memory as the
// packed answers, and an informer's store kept a second map of them, so
// objects are read once into these inputs as they arrive and then dropped:
// only the fields an answer depends on, addresses parsed, endpoints that
// are not ready left out.

// importIn is what the index reads of a ServiceImport.
type importIn struct {
	headless bool
	// ips are the ClusterSetIPs that parse; the CRD does not validate
	// them, and a bad one is ignored rather than fatal.
	ips   []netip.Addr
	ports []portIn
}

// portIn is one port of a ServiceImport or an EndpointSlice.
type portIn struct {
	name, proto string
	port        int32
	// hasPort is false for an EndpointSlice port without a number: it
	// still names a _<port>._<proto> label, which then answers NODATA.
	hasPort bool
}

// sliceIn is what the index reads of an MCS EndpointSlice.
type sliceIn struct {
	// cluster is the lowercase source-cluster label; "" when it is not a
	// usable name, which leaves the slice's endpoints out.
	cluster   string
	endpoints []endpointIn
	ports     []portIn
}

// endpointIn is one ready endpoint with at least one address.
type endpointIn struct {
	// host is the endpoint's hostname, or the spec's system-assigned id
	// when it has none usable.
	host  string
	addrs []netip.Addr
}

func importInput(si *mcsv1beta1.ServiceImport) *importIn {
	in := &importIn{headless: si.Spec.Type == mcsv1beta1.Headless}
	for _, ip := range si.Spec.IPs {
		if a, err := netip.ParseAddr(ip); err == nil {
			in.ips = append(in.ips, a.Unmap())
		}
	}
	for _, pt := range si.Spec.Ports {
		in.ports = append(in.ports, portIn{name: pt.Name, proto: protocol(string(pt.Protocol)), port: pt.Port, hasPort: true})
	}
	return in
}

func sliceInput(es *discoveryv1.EndpointSlice) *sliceIn {
	in := &sliceIn{}
	if c := strings.ToLower(es.Labels[mcsv1beta1.LabelSourceCluster]); validName(c) {
		in.cluster = c
	}
	for _, pt := range es.Ports {
		p := portIn{name: deref(pt.Name), proto: protocol(string(deref(pt.Protocol)))}
		if pt.Port != nil {
			p.port, p.hasPort = *pt.Port, true
		}
		in.ports = append(in.ports, p)
	}
	for _, ep := range es.Endpoints {
		if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
			continue
		}
		var addrs []netip.Addr
		for _, s := range ep.Addresses {
			if a, err := netip.ParseAddr(s); err == nil {
				addrs = append(addrs, a.Unmap())
			}
		}
		if len(addrs) == 0 {
			continue
		}
		host := strings.ToLower(deref(ep.Hostname))
		if host == "" || strings.Contains(host, ".") || !validName(host) {
			// The spec's system-assigned id, as CoreDNS and the
			// conformance suite derive it: the address with dashes.
			host = strings.NewReplacer(".", "-", ":", "-").Replace(addrs[0].String())
		}
		in.endpoints = append(in.endpoints, endpointIn{host: host, addrs: addrs})
	}
	return in
}

// protocol returns the constant for the common protocols, so that 100,000
// ports do not each keep their own copy of "TCP".
func protocol(p string) string {
	switch p {
	case "", "TCP":
		return "TCP"
	case "UDP":
		return "UDP"
	case "SCTP":
		return "SCTP"
	}
	return p
}

func (a *importIn) equal(b *importIn) bool {
	return a.headless == b.headless && slices.Equal(a.ips, b.ips) && slices.Equal(a.ports, b.ports)
}

func (a *sliceIn) equal(b *sliceIn) bool {
	return a.cluster == b.cluster && slices.Equal(a.ports, b.ports) &&
		slices.EqualFunc(a.endpoints, b.endpoints, func(x, y endpointIn) bool {
			return x.host == y.host && slices.Equal(x.addrs, y.addrs)
		})
}
