package dnsserver

import (
	"fmt"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
)

// Objects for the table tests, as an MCS agent would write them.

func imp(ns, name string, typ mcsv1beta1.ServiceImportType, ips []string, ports ...mcsv1beta1.ServicePort) *mcsv1beta1.ServiceImport {
	return &mcsv1beta1.ServiceImport{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       mcsv1beta1.ServiceImportSpec{Type: typ, IPs: ips, Ports: ports},
	}
}

func port(name string, proto corev1.Protocol, p int32) mcsv1beta1.ServicePort {
	return mcsv1beta1.ServicePort{Name: name, Protocol: proto, Port: p}
}

type ep struct {
	host  string
	ready *bool
	addrs []string
}

func ptr[T any](v T) *T { return &v }

func slice(ns, name, svc, cluster string, at discoveryv1.AddressType, ports []discoveryv1.EndpointPort, eps ...ep) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{
			mcsv1beta1.LabelServiceName: svc,
		}},
		AddressType: at,
		Ports:       ports,
	}
	if cluster != "" {
		es.Labels[mcsv1beta1.LabelSourceCluster] = cluster
	}
	for _, e := range eps {
		x := discoveryv1.Endpoint{Addresses: e.addrs, Conditions: discoveryv1.EndpointConditions{Ready: e.ready}}
		if e.host != "" {
			x.Hostname = ptr(e.host)
		}
		es.Endpoints = append(es.Endpoints, x)
	}
	return es
}

func eport(name string, p int32) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: ptr(name), Protocol: ptr(corev1.ProtocolTCP), Port: ptr(p)}
}

// testBuilder holds the objects every table test uses.
func testBuilder(t testing.TB, cfg Config) *Builder {
	t.Helper()
	b, err := NewBuilder(cfg, []netip.Addr{netip.MustParseAddr("10.96.0.53")})
	if err != nil {
		t.Fatal(err)
	}
	cs, hl := mcsv1beta1.ClusterSetIP, mcsv1beta1.Headless
	b.SetImport(imp("demo", "echo", cs, []string{"10.100.0.10"},
		port("http", corev1.ProtocolTCP, 80), port("", corev1.ProtocolTCP, 9090), port("dns", corev1.ProtocolUDP, 53), port("http-alt", corev1.ProtocolTCP, 80)))
	b.SetImport(imp("demo", "dual", cs, []string{"10.100.9.1", "fd00:10:100::1"}, port("http", corev1.ProtocolTCP, 80)))
	b.SetImport(imp("demo", "v6only", cs, []string{"fd00:10:100::2"}, port("http", corev1.ProtocolTCP, 80)))
	b.SetImport(imp("demo", "pending", cs, nil, port("http", corev1.ProtocolTCP, 80)))
	b.SetImport(imp("demo", "db", hl, nil, port("tcp-5432", corev1.ProtocolTCP, 5432)))
	b.SetImport(imp("demo", "empty", hl, nil, port("tcp-5432", corev1.ProtocolTCP, 5432)))
	b.SetImport(imp("other", "big", hl, nil))
	dbPorts := []discoveryv1.EndpointPort{eport("tcp-5432", 5432), eport("metrics", 9100)}
	b.SetSlice(slice("demo", "db-a", "db", "cluster-a", discoveryv1.AddressTypeIPv4, dbPorts,
		ep{"pod-a0", ptr(true), []string{"10.246.0.10"}},
		ep{"pod-a1", ptr(false), []string{"10.246.0.11"}}))
	b.SetSlice(slice("demo", "db-a6", "db", "cluster-a", discoveryv1.AddressTypeIPv6, dbPorts,
		ep{"pod-a0", ptr(true), []string{"fd00:246::10"}}))
	b.SetSlice(slice("demo", "db-b", "db", "cluster-b", discoveryv1.AddressTypeIPv4, dbPorts[:1],
		ep{"", nil, []string{"10.246.1.10"}},
		ep{"pod-b1", nil, []string{"10.246.1.11"}}))
	// No source-cluster label: not an MCS slice we can name; ignored.
	b.SetSlice(slice("demo", "db-x", "db", "", discoveryv1.AddressTypeIPv4, dbPorts, ep{"pod-x", nil, []string{"10.246.9.9"}}))
	// An endpoint slice for echo: only the opt-in per-cluster form reads it.
	b.SetSlice(slice("demo", "echo-b", "echo", "cluster-b", discoveryv1.AddressTypeIPv4, nil, ep{"", nil, []string{"10.246.1.20"}}))
	var big []ep
	for i := range 200 {
		big = append(big, ep{fmt.Sprintf("pod-%d", i), nil, []string{fmt.Sprintf("10.247.%d.%d", i/250, i%250+1)}})
	}
	b.SetSlice(slice("other", "big-c", "big", "cluster-c", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{eport("http", 80)}, big...))
	return b
}
