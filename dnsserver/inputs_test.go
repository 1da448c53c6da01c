package dnsserver

import (
	"fmt"
	"net/netip"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
)

// TestInputs pins what the Builder keeps of each object: only what an
// answer depends on, already parsed.
func TestInputs(t *testing.T) {
	addrs := func(s ...string) []netip.Addr {
		var out []netip.Addr
		for _, a := range s {
			out = append(out, netip.MustParseAddr(a))
		}
		return out
	}
	for _, tc := range []struct {
		name string
		si   *mcsv1beta1.ServiceImport
		want *importIn
	}{
		{"clustersetip", imp("ns", "web", mcsv1beta1.ClusterSetIP, []string{"10.0.0.1", "fd00::1"}, port("http", corev1.ProtocolTCP, 80)),
			&importIn{ips: addrs("10.0.0.1", "fd00::1"), ports: []portIn{{name: "http", proto: "TCP", port: 80, hasPort: true}}}},
		{"bad and mapped ips", imp("ns", "web", mcsv1beta1.ClusterSetIP, []string{"nope", "::ffff:10.0.0.2"}, port("", "", 53)),
			&importIn{ips: addrs("10.0.0.2"), ports: []portIn{{proto: "TCP", port: 53, hasPort: true}}}},
		{"headless", imp("ns", "db", mcsv1beta1.Headless, nil, port("dns", corev1.ProtocolUDP, 53)),
			&importIn{headless: true, ports: []portIn{{name: "dns", proto: "UDP", port: 53, hasPort: true}}}},
	} {
		t.Run("import/"+tc.name, func(t *testing.T) {
			tc.si.Annotations, tc.si.Status.Clusters = map[string]string{"a": "b"}, []mcsv1beta1.ClusterStatus{{Cluster: "x"}}
			if got := importInput(tc.si); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}

	noPort := discoveryv1.EndpointPort{Name: ptr("any")}
	for _, tc := range []struct {
		name string
		es   *discoveryv1.EndpointSlice
		want *sliceIn
	}{
		{"ready endpoints, parsed", slice("ns", "db-a", "db", "Cluster-A", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{eport("tcp-5432", 5432), noPort},
			ep{"Pod-0", ptr(true), []string{"10.1.0.1"}},
			ep{"pod-1", ptr(false), []string{"10.1.0.2"}}, // not ready: left out
			ep{"", nil, []string{"10.1.0.3"}},             // ready unset counts as ready; no hostname: the address
			ep{"a.b", nil, []string{"bad", "10.1.0.4"}},   // a dotted hostname is not one label
			ep{"pod-5", nil, []string{"bad"}}),            // no usable address: left out
			&sliceIn{cluster: "cluster-a",
				ports: []portIn{{name: "tcp-5432", proto: "TCP", port: 5432, hasPort: true}, {name: "any", proto: "TCP"}},
				endpoints: []endpointIn{
					{host: "pod-0", addrs: addrs("10.1.0.1")},
					{host: "10-1-0-3", addrs: addrs("10.1.0.3")},
					{host: "10-1-0-4", addrs: addrs("10.1.0.4")},
				}}},
		{"ipv6", slice("ns", "db-a6", "db", "a", discoveryv1.AddressTypeIPv6, nil, ep{"", nil, []string{"fd00::10"}}),
			&sliceIn{cluster: "a", endpoints: []endpointIn{{host: "fd00--10", addrs: addrs("fd00::10")}}}},
		{"no usable cluster", slice("ns", "db-x", "db", "", discoveryv1.AddressTypeIPv4, nil, ep{"pod-0", nil, []string{"10.1.0.1"}}),
			&sliceIn{endpoints: []endpointIn{{host: "pod-0", addrs: addrs("10.1.0.1")}}}},
	} {
		t.Run("slice/"+tc.name, func(t *testing.T) {
			tc.es.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "agent"}}
			for i := range tc.es.Endpoints {
				tc.es.Endpoints[i].NodeName, tc.es.Endpoints[i].TargetRef = ptr("node-1"), &corev1.ObjectReference{Name: "pod"}
			}
			if got := sliceInput(tc.es); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestBuilderChanges: a relist removes what it does not list, and a
// change the index does not read recompiles nothing.
func TestBuilderChanges(t *testing.T) {
	hl := mcsv1beta1.Headless
	es := func(name, svc string, addr string) *discoveryv1.EndpointSlice {
		return slice("ns", name, svc, "a", discoveryv1.AddressTypeIPv4, nil, ep{"pod-0", nil, []string{addr}})
	}
	type step struct {
		do        func(b *Builder)
		wantDirty bool
		services  int
		names     int
	}
	web := imp("ns", "web", mcsv1beta1.ClusterSetIP, []string{"10.0.0.1"})
	db := imp("ns", "db", hl, nil)
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"relist removes what is gone", []step{
			{func(b *Builder) { b.SetImport(web); b.SetImport(db); b.SetSlice(es("db-a", "db", "10.1.0.1")) }, true, 2, 4},
			{func(b *Builder) { b.ReplaceSlices(nil) }, true, 2, 1}, // db has no endpoint left: no names
			{func(b *Builder) { b.ReplaceImports([]*mcsv1beta1.ServiceImport{db}) }, true, 1, 0},
			{func(b *Builder) { b.ReplaceSlices([]*discoveryv1.EndpointSlice{es("db-a", "db", "10.1.0.1")}) }, true, 1, 3},
		}},
		{"unread changes are no change", []step{
			{func(b *Builder) { b.SetImport(web); b.SetImport(db); b.SetSlice(es("db-a", "db", "10.1.0.1")) }, true, 2, 4},
			{func(b *Builder) {
				w := web.DeepCopy()
				w.Status.Clusters, w.Labels, w.ResourceVersion = []mcsv1beta1.ClusterStatus{{Cluster: "b"}}, map[string]string{"x": "y"}, "7"
				b.SetImport(w)
				s := es("db-a", "db", "10.1.0.1")
				s.Endpoints[0].NodeName = ptr("node-2")
				b.SetSlice(s)
			}, false, 2, 4},
			{func(b *Builder) {
				b.ReplaceImports([]*mcsv1beta1.ServiceImport{web, db})
				b.ReplaceSlices([]*discoveryv1.EndpointSlice{es("db-a", "db", "10.1.0.1")})
			}, false, 2, 4},
			{func(b *Builder) { b.SetSlice(es("db-a", "db", "10.1.0.9")) }, true, 2, 4},
		}},
		{"a slice moves to another service", []step{
			{func(b *Builder) { b.SetImport(web); b.SetImport(db); b.SetSlice(es("db-a", "db", "10.1.0.1")) }, true, 2, 4},
			{func(b *Builder) { b.SetSlice(es("db-a", "web", "10.1.0.1")) }, true, 2, 1}, // db lost its only endpoint
			{func(b *Builder) { b.DeleteSlice("ns", "db-a") }, true, 2, 1},
			{func(b *Builder) { b.DeleteImport("ns", "web") }, true, 1, 0},
			{func(b *Builder) { b.DeleteImport("ns", "web") }, false, 1, 0},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := NewBuilder(Config{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			b.Build()
			for i, s := range tc.steps {
				s.do(b)
				if got := b.Dirty(); got != s.wantDirty {
					t.Errorf("step %d: dirty %v, want %v", i, got, s.wantDirty)
				}
				ix := b.Build()
				if ix.Services() != s.services || ix.Names() != s.names {
					t.Errorf("step %d: %d services, %d names; want %d, %d", i, ix.Services(), ix.Names(), s.services, s.names)
				}
			}
		})
	}
}

// TestServiceMapSharesShards: a rebuild copies only the shards of the
// services it changes, and never writes a published index's shards.
func TestServiceMapSharesShards(t *testing.T) {
	b, err := NewBuilder(Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2000 {
		b.SetImport(imp("ns", fmt.Sprintf("svc%d", i), mcsv1beta1.ClusterSetIP, []string{"10.0.0.1"}))
	}
	first := b.Build()
	b.SetImport(imp("ns", "svc7", mcsv1beta1.ClusterSetIP, []string{"10.0.0.2"}))
	b.DeleteImport("ns", "svc8")
	second := b.Build()
	changed := map[int]bool{shardOf(wireKey("svc7.ns.")): true, shardOf(wireKey("svc8.ns.")): true}
	for i := range serviceShards {
		shared := reflect.ValueOf(first.services.shards[i]).Pointer() == reflect.ValueOf(second.services.shards[i]).Pointer()
		if shared == changed[i] {
			t.Errorf("shard %d: shared %v, changed %v", i, shared, changed[i])
		}
	}
	if first.Services() != 2000 || second.Services() != 1999 {
		t.Errorf("services %d then %d, want 2000 then 1999", first.Services(), second.Services())
	}
	for _, tc := range []struct {
		ix   *Index
		name string
		want bool
	}{{first, "svc7.ns.", true}, {first, "svc8.ns.", true}, {second, "svc7.ns.", true}, {second, "svc8.ns.", false}, {second, "svc9.ns.", true}} {
		if got := tc.ix.services.get([]byte(wireKey(tc.name))) != nil; got != tc.want {
			t.Errorf("%s in index %d: %v, want %v", tc.name, tc.ix.Serial(), got, tc.want)
		}
	}
	if a := first.services.get([]byte(wireKey("svc7.ns."))).apex.a; string(a.tcp) == string(second.services.get([]byte(wireKey("svc7.ns."))).apex.a.tcp) {
		t.Error("the first index sees the second's change")
	}
}
