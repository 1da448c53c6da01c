package agent

import (
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// TestPlanRoutesAPortOnlyToWhoExposesIt is mcs-api's conformance case:
// a (older) exports "tcp" 42, b exports "tcp" 4242 (conflict: a's wins),
// and c exports "tcp2" 4242 besides "tcp" 42. The derived Service's port
// "tcp" must reach only clusters that serve it, "tcp2" only c, each by the
// locality policy among those that serve it; each cluster's MCS slice
// keeps its ports as exported.
func TestPlanRoutesAPortOnlyToWhoExposesIt(t *testing.T) {
	tcp := func(name string, port int32) brokerv1.ServicePort {
		return brokerv1.ServicePort{Name: name, Protocol: corev1.ProtocolTCP, Port: port}
	}
	slice := func(cluster string, names ...string) []*discoveryv1.EndpointSlice {
		s := planSlices(cluster, true)
		s[0].Ports = nil
		for _, n := range names {
			s[0].Ports = append(s[0].Ports, discoveryv1.EndpointPort{Name: new(n), Port: new(int32(42))})
		}
		return s
	}
	pods := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}
	healthy := map[string]clusterState{"a": {Region: "eu", Claimed: true, PodCIDRs: pods},
		"b": {Region: "eu", Claimed: true, PodCIDRs: pods}, "c": {Region: "eu", Claimed: true, PodCIDRs: pods}}
	tests := []struct {
		name, local, policy string
		want                map[string][]string // cluster: its derived slice's ports
	}{
		{"spread: every cluster, each port where it is served", "a", LocalitySpread,
			map[string][]string{"a": {"tcp"}, "c": {"tcp", "tcp2"}}},
		{"local, here a: tcp here, tcp2 from the one that serves it", "a", "",
			map[string][]string{"a": {"tcp"}, "c": {"tcp2"}}},
		{"local, here b, which serves neither: the nearest that serve each", "b", "",
			map[string][]string{"a": {"tcp"}, "c": {"tcp", "tcp2"}}},
		{"local, here c, which serves both: c alone", "c", "",
			map[string][]string{"c": {"tcp", "tcp2"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := importInput{
				Namespace: "ns", Name: "web", Local: tt.local, Region: "eu", Clusters: healthy,
				Exports: []*brokerv1.ExportedService{
					planExport("a", 1, brokerv1.ClusterSetIP, tt.policy, tcp("tcp", 42)),
					planExport("b", 2, brokerv1.ClusterSetIP, "", tcp("tcp", 4242)),
					planExport("c", 3, brokerv1.ClusterSetIP, "", tcp("tcp", 42), tcp("tcp2", 4242)),
				},
				Endpoints: map[string][]*discoveryv1.EndpointSlice{"a": slice("a", "tcp"), "b": slice("b", "tcp"), "c": slice("c", "tcp", "tcp2")},
			}
			p := planImport(in)
			derived := map[string][]string{}
			mcs := map[string][]string{}
			for _, s := range p.Slices {
				var names []string
				for _, port := range s.Ports {
					names = append(names, deref(port.Name))
				}
				slices.Sort(names)
				switch s.Labels[labelSliceRole] {
				case roleDerived:
					derived[s.Labels[brokerv1.LabelSourceCluster]] = names
				case roleMCS:
					mcs[s.Labels[brokerv1.LabelSourceCluster]] = names
				}
			}
			if len(derived) != len(tt.want) {
				t.Errorf("derived slices %v, want %v", derived, tt.want)
			}
			for c, names := range tt.want {
				if !slices.Equal(derived[c], names) {
					t.Errorf("derived slice of %s serves ports %v, want %v", c, derived[c], names)
				}
			}
			if !slices.Equal(mcs["b"], []string{"tcp"}) {
				t.Errorf("b's MCS slice has ports %v, want its own [tcp]", mcs["b"])
			}
		})
	}
}
