package agent

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/merge"
)

// planExport is one cluster's export record for the plan tests; age orders
// the records (older wins conflicts).
func planExport(cluster string, age int, typ brokerv1.ServiceType, locality string, ports ...brokerv1.ServicePort) *brokerv1.ExportedService {
	if len(ports) == 0 {
		ports = []brokerv1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}}
	}
	e := &brokerv1.ExportedService{
		ObjectMeta: metav1.ObjectMeta{Name: brokerv1.ExportedServiceName(cluster, "ns", "web"), Namespace: "broker"},
		Spec: brokerv1.ExportedServiceSpec{SourceCluster: cluster, ServiceNamespace: "ns", ServiceName: "web", Type: typ, Ports: ports,
			ExportCreationTimestamp: metav1.NewTime(time.Date(2026, 1, 1, 0, 0, age, 0, time.UTC))},
	}
	if locality != "" {
		e.Annotations = map[string]string{brokerv1.AnnotationLocality: locality}
	}
	return e
}

// planSlices is one cluster's endpoints of the service, one per readiness
// given, as the broker holds them.
func planSlices(cluster string, ready ...bool) []*discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: cluster + "-web", Labels: map[string]string{brokerv1.LabelSourceCluster: cluster}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: new("http"), Port: new(int32(8080))}},
	}
	for i, r := range ready {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{fmt.Sprintf("10.0.%d.%d", len(cluster), i+1)},
			Conditions: discoveryv1.EndpointConditions{Ready: new(r)}})
	}
	return []*discoveryv1.EndpointSlice{s}
}

// stubGateway is gateway mode for the plan: a fixed allocation and gateway
// pods.
type stubGateway struct {
	as   *egressAssignment
	pods map[discoveryv1.AddressType][]discoveryv1.Endpoint
	keys []string
}

func (g *stubGateway) egress(key string, r merge.Result) *egressAssignment {
	g.keys = append(g.keys, key)
	if !gatewayCarries(r) {
		return &egressAssignment{}
	}
	return g.as
}

func (g *stubGateway) endpoints() map[discoveryv1.AddressType][]discoveryv1.Endpoint { return g.pods }

// planView is what a plan says, in short.
type planView struct {
	remove   bool
	typ      mcsv1beta1.ServiceImportType
	clusters []string // the merged clusters
	mcs      []string // clusters in the MCS slices
	derived  []string // clusters in the derived Service's slices, or "gateway"
	service  bool     // a derived Service is planned
	ips      []string // the ServiceImport's ClusterSetIPs
	egress   string   // the egress annotation
	refused  int      // reports of other clusters' records left out
	capped   []string // clusters left out by the import cap
}

func viewPlan(p *importPlan) planView {
	v := planView{remove: p.Remove, refused: len(p.Refused)}
	if p.Remove {
		return v
	}
	v.typ, v.clusters, v.service, v.capped = p.Import.Spec.Type, p.Merged.Clusters, p.Derived != nil, p.Capped
	v.ips, v.egress = p.Import.Spec.IPs, p.Import.Annotations[brokerv1.AnnotationEgressPorts]
	for _, s := range p.Slices {
		switch s.Labels[labelSliceRole] {
		case roleMCS:
			v.mcs = append(v.mcs, s.Labels[brokerv1.LabelSourceCluster])
		case roleDerived:
			v.derived = append(v.derived, s.Labels[brokerv1.LabelSourceCluster])
		case roleGateway:
			v.derived = append(v.derived, "gateway")
		}
		if len(s.OwnerReferences) != 0 {
			panic("the plan sets no owner: apply does, knowing the ServiceImport's UID")
		}
	}
	sort.Strings(v.mcs)
	sort.Strings(v.derived)
	v.derived = slices.Compact(v.derived)
	return v
}

// TestPlanImport plans imports in cluster a (region eu; b is in us, c in
// eu) from records alone: no apiserver.
func TestPlanImport(t *testing.T) {
	pods := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}
	healthy := map[string]clusterState{"a": {Region: "eu", Claimed: true, PodCIDRs: pods}, "b": {Region: "us", Claimed: true, PodCIDRs: pods},
		"c": {Region: "eu", Claimed: true, PodCIDRs: pods}}
	with := func(cluster string, s clusterState) map[string]clusterState {
		out := map[string]clusterState{}
		for c, st := range healthy {
			out[c] = st
		}
		s.Claimed, s.PodCIDRs = healthy[cluster].Claimed, healthy[cluster].PodCIDRs
		s.Region = healthy[cluster].Region
		out[cluster] = s
		return out
	}
	injected := planSlices("b", true)
	injected[0].Endpoints[0].Addresses = []string{"198.51.100.7"}
	joined := time.Date(2026, 1, 1, 0, 0, 10, 0, time.UTC)
	derived := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: derivedServiceName("web"), Namespace: "ns"},
		Spec: corev1.ServiceSpec{ClusterIPs: []string{"10.96.0.7"}, IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol}}}
	gwPods := map[discoveryv1.AddressType][]discoveryv1.Endpoint{discoveryv1.AddressTypeIPv4: {{Addresses: []string{"10.240.0.9"}}}}
	full := &egressAssignment{Ports: []brokerv1.EgressPort{{Protocol: corev1.ProtocolTCP, Port: 80, Egress: 16000}}}
	exhausted := &egressAssignment{Missing: []portKey{{corev1.ProtocolTCP, 80}}}
	cs := brokerv1.ClusterSetIP
	abc := map[string][]*discoveryv1.EndpointSlice{"a": planSlices("a", true), "b": planSlices("b", true), "c": planSlices("c", true)}

	tests := []struct {
		name string
		in   importInput
		want planView
	}{
		{"local: this cluster's ready endpoints", importInput{
			Exports:   []*brokerv1.ExportedService{planExport("a", 1, cs, ""), planExport("b", 2, cs, ""), planExport("c", 3, cs, "")},
			Endpoints: abc, Clusters: healthy, Derived: derived},
			planView{typ: mcsv1beta1.ClusterSetIP, clusters: []string{"a", "b", "c"}, mcs: []string{"a", "b", "c"}, derived: []string{"a"},
				service: true, ips: []string{"10.96.0.7"}}},
		{"local with none ready here: the same region", importInput{
			Exports:   []*brokerv1.ExportedService{planExport("a", 1, cs, ""), planExport("b", 2, cs, ""), planExport("c", 3, cs, "")},
			Endpoints: map[string][]*discoveryv1.EndpointSlice{"a": planSlices("a", false), "b": planSlices("b", true), "c": planSlices("c", true)},
			Clusters:  healthy},
			planView{typ: mcsv1beta1.ClusterSetIP, clusters: []string{"a", "b", "c"}, mcs: []string{"a", "b", "c"}, derived: []string{"c"}, service: true}},
		{"spread: every cluster", importInput{
			Exports:   []*brokerv1.ExportedService{planExport("a", 1, cs, LocalitySpread), planExport("b", 2, cs, ""), planExport("c", 3, cs, "")},
			Endpoints: abc, Clusters: healthy},
			planView{typ: mcsv1beta1.ClusterSetIP, clusters: []string{"a", "b", "c"}, mcs: []string{"a", "b", "c"}, derived: []string{"a", "b", "c"}, service: true}},
		{"remote-first: the nearest other cluster", importInput{
			Exports:   []*brokerv1.ExportedService{planExport("a", 1, cs, LocalityRemoteFirst), planExport("b", 2, cs, ""), planExport("c", 3, cs, "")},
			Endpoints: abc, Clusters: healthy},
			planView{typ: mcsv1beta1.ClusterSetIP, clusters: []string{"a", "b", "c"}, mcs: []string{"a", "b", "c"}, derived: []string{"c"}, service: true}},
		{"the policy is the oldest export's", importInput{
			Exports:   []*brokerv1.ExportedService{planExport("a", 2, cs, LocalitySpread), planExport("b", 1, cs, "")},
			Endpoints: abc, Clusters: healthy},
			planView{typ: mcsv1beta1.ClusterSetIP, clusters: []string{"a", "b"}, mcs: []string{"a", "b"}, derived: []string{"a"}, service: true}},
		{"a lapsed cluster stays imported but gets no traffic while another can take it", importInput{
			Exports:   []*brokerv1.ExportedService{planExport("a", 1, cs, ""), planExport("b", 2, cs, ""), planExport("c", 3, cs, "")},
			Endpoints: map[string][]*discoveryv1.EndpointSlice{"a": planSlices("a", false), "b": planSlices("b", true), "c": planSlices("c", true)},
			Clusters:  with("c", clusterState{Health: brokerv1.Lapsed, Unreachable: true})},
			planView{typ: mcsv1beta1.ClusterSetIP, clusters: []string{"a", "b", "c"}, mcs: []string{"a", "b", "c"}, derived: []string{"b"}, service: true}},
		{"a withdrawn cluster leaves the import", importInput{
			Exports:   []*brokerv1.ExportedService{planExport("a", 1, cs, ""), planExport("b", 2, cs, "")},
			Endpoints: abc, Clusters: with("a", clusterState{Health: brokerv1.Withdrawn, Unreachable: true})},
			planView{typ: mcsv1beta1.ClusterSetIP, clusters: []string{"b"}, mcs: []string{"b"}, derived: []string{"b"}, service: true}},
		{"only withdrawn clusters export: the import goes", importInput{
			Exports:   []*brokerv1.ExportedService{planExport("b", 1, cs, "")},
			Endpoints: abc, Clusters: with("b", clusterState{Health: brokerv1.Withdrawn})},
			planView{remove: true}},
		{"no export at all: the import goes", importInput{Clusters: healthy}, planView{remove: true}},
		{"conflict: the oldest's type, the union of ports, every cluster", importInput{
			Exports: []*brokerv1.ExportedService{planExport("b", 1, cs, ""),
				planExport("c", 2, brokerv1.Headless, "", brokerv1.ServicePort{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80},
					brokerv1.ServicePort{Name: "sig", Protocol: corev1.ProtocolSCTP, Port: 9000})},
			Endpoints: abc, Clusters: healthy},
			planView{typ: mcsv1beta1.ClusterSetIP, clusters: []string{"b", "c"}, mcs: []string{"b", "c"}, derived: []string{"c"}, service: true}},
		{"headless: no derived Service, no ClusterSetIP", importInput{
			Exports:   []*brokerv1.ExportedService{planExport("a", 1, brokerv1.Headless, ""), planExport("b", 2, brokerv1.Headless, "")},
			Endpoints: abc, Clusters: healthy, Derived: derived},
			planView{typ: mcsv1beta1.Headless, clusters: []string{"a", "b"}, mcs: []string{"a", "b"}}},
		{"gateway: the derived Service points at the gateway", importInput{
			Exports:   []*brokerv1.ExportedService{planExport("a", 1, cs, ""), planExport("b", 2, cs, "")},
			Endpoints: abc, Clusters: healthy, Derived: derived, Gateway: &stubGateway{as: full, pods: gwPods}},
			planView{typ: mcsv1beta1.ClusterSetIP, clusters: []string{"a", "b"}, mcs: []string{"a", "b"}, derived: []string{"gateway"},
				service: true, ips: []string{"10.96.0.7"}, egress: "TCP/80=16000"}},
		{"gateway without ports: direct, by locality", importInput{
			Exports:   []*brokerv1.ExportedService{planExport("a", 1, cs, ""), planExport("b", 2, cs, "")},
			Endpoints: abc, Clusters: healthy, Derived: derived, Gateway: &stubGateway{as: exhausted, pods: gwPods}},
			planView{typ: mcsv1beta1.ClusterSetIP, clusters: []string{"a", "b"}, mcs: []string{"a", "b"}, derived: []string{"a"},
				service: true, ips: []string{"10.96.0.7"}}},
		{"gateway with no ready pod: direct, by locality", importInput{
			Exports:   []*brokerv1.ExportedService{planExport("a", 1, cs, ""), planExport("b", 2, cs, "")},
			Endpoints: abc, Clusters: healthy, Derived: derived, Gateway: &stubGateway{as: full}},
			planView{typ: mcsv1beta1.ClusterSetIP, clusters: []string{"a", "b"}, mcs: []string{"a", "b"}, derived: []string{"a"},
				service: true, ips: []string{"10.96.0.7"}, egress: "TCP/80=16000"}},
		{"the endpoint injection: an address outside the exporter's pod CIDRs is left out", importInput{
			Exports:   []*brokerv1.ExportedService{planExport("a", 1, cs, LocalitySpread), planExport("b", 2, cs, "")},
			Endpoints: map[string][]*discoveryv1.EndpointSlice{"a": planSlices("a", true), "b": injected}, Clusters: healthy},
			planView{typ: mcsv1beta1.ClusterSetIP, clusters: []string{"a", "b"}, mcs: []string{"a"}, derived: []string{"a"}, service: true, refused: 1}},
		{"direct mode: nothing of a cluster that claims no pod CIDRs", importInput{
			Exports:   []*brokerv1.ExportedService{planExport("a", 1, cs, LocalitySpread), planExport("b", 2, cs, "")},
			Endpoints: abc, Clusters: map[string]clusterState{"a": healthy["a"], "b": {Region: "us"}}},
			planView{typ: mcsv1beta1.ClusterSetIP, clusters: []string{"a", "b"}, mcs: []string{"a"}, derived: []string{"a"}, service: true, refused: 1}},
		{"an export cannot claim to predate its cluster's joining", importInput{
			Exports:   []*brokerv1.ExportedService{planExport("a", 5, cs, ""), planExport("b", 0, brokerv1.Headless, "")},
			Endpoints: abc, Clusters: with("b", clusterState{Joined: joined})},
			planView{typ: mcsv1beta1.ClusterSetIP, clusters: []string{"a", "b"}, mcs: []string{"a", "b"}, derived: []string{"a"}, service: true}},
		{"the import cap: a capped cluster's export contributes nothing, though the oldest", importInput{
			Exports: []*brokerv1.ExportedService{planExport("b", 1, brokerv1.Headless, ""), planExport("a", 2, cs, ""),
				planExport("c", 3, cs, "")},
			Endpoints: abc, Clusters: healthy, Capped: map[string]bool{"b": true}, MaxImports: 1},
			planView{typ: mcsv1beta1.ClusterSetIP, clusters: []string{"a", "c"}, mcs: []string{"a", "c"}, derived: []string{"a"}, service: true,
				capped: []string{"b"}}},
		{"the import cap: a service only a capped cluster exports is not imported", importInput{
			Exports:   []*brokerv1.ExportedService{planExport("b", 1, cs, "")},
			Endpoints: abc, Clusters: healthy, Capped: map[string]bool{"b": true}, MaxImports: 1},
			planView{remove: true}},
		{"gateway, headless: nothing of the gateway", importInput{
			Exports:   []*brokerv1.ExportedService{planExport("a", 1, brokerv1.Headless, "")},
			Endpoints: abc, Clusters: healthy, Gateway: &stubGateway{as: full, pods: gwPods}},
			planView{typ: mcsv1beta1.Headless, clusters: []string{"a"}, mcs: []string{"a"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.in.Namespace, tt.in.Name, tt.in.Local, tt.in.Region = "ns", "web", "a", "eu"
			p := planImport(tt.in)
			if got := viewPlan(p); fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", tt.want) {
				t.Errorf("plan\n got  %+v\n want %+v", got, tt.want)
			}
			if g, ok := tt.in.Gateway.(*stubGateway); ok && !p.Remove && !slices.Equal(g.keys, []string{"ns/web"}) {
				t.Errorf("the gateway was asked for %v, want ns/web once", g.keys)
			}
		})
	}
}

// TestPlanSetDerived: once apply has written the derived Service, its
// allocated addresses become the ServiceImport's, and the gateway's slices
// follow its families.
func TestPlanSetDerived(t *testing.T) {
	in := importInput{Namespace: "ns", Name: "web", Local: "a", TrustUnclaimed: true,
		Exports:   []*brokerv1.ExportedService{planExport("b", 1, brokerv1.ClusterSetIP, "")},
		Endpoints: map[string][]*discoveryv1.EndpointSlice{"b": planSlices("b", true)},
		Gateway: &stubGateway{as: &egressAssignment{Ports: []brokerv1.EgressPort{{Protocol: corev1.ProtocolTCP, Port: 80, Egress: 16000}}},
			pods: map[discoveryv1.AddressType][]discoveryv1.Endpoint{discoveryv1.AddressTypeIPv4: {{Addresses: []string{"10.240.0.9"}}}}}}
	p := planImport(in)
	if v := viewPlan(p); len(v.ips) != 0 || !slices.Equal(v.derived, []string{"b"}) || !v.service {
		t.Fatalf("before the derived Service exists: %+v", v)
	}
	if p.Derived.Name != derivedServiceName("web") || p.Derived.Labels[labelDerivedFor] != "web" || len(p.Derived.Spec.Ports) != 1 {
		t.Errorf("derived Service %+v", p.Derived)
	}
	p.setDerived(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: p.Derived.Name, Namespace: "ns"},
		Spec: corev1.ServiceSpec{ClusterIPs: []string{"10.96.0.8"}, IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol}}})
	if v := viewPlan(p); !slices.Equal(v.ips, []string{"10.96.0.8"}) || !slices.Equal(v.derived, []string{"gateway"}) {
		t.Errorf("after the derived Service is written: %+v", v)
	}
}

// TestDerivedServiceFamilies: a dual-stack export asks for no families, so
// that a single-stack importer's apiserver gives its one and a dual-stack
// importer both; a single-family export asks for exactly that family.
func TestDerivedServiceFamilies(t *testing.T) {
	v4, v6 := corev1.IPv4Protocol, corev1.IPv6Protocol
	for _, tc := range []struct {
		families     []corev1.IPFamily
		wantFamilies []corev1.IPFamily
		wantPolicy   corev1.IPFamilyPolicy
	}{
		{[]corev1.IPFamily{v4, v6}, nil, corev1.IPFamilyPolicyPreferDualStack},
		{[]corev1.IPFamily{v6, v4}, nil, corev1.IPFamilyPolicyPreferDualStack},
		{[]corev1.IPFamily{v4}, []corev1.IPFamily{v4}, corev1.IPFamilyPolicySingleStack},
		{[]corev1.IPFamily{v6}, []corev1.IPFamily{v6}, corev1.IPFamilyPolicySingleStack},
		{nil, nil, ""},
	} {
		svc := derivedService("ns", "web", merge.Result{IPFamilies: tc.families})
		policy := corev1.IPFamilyPolicy("")
		if svc.Spec.IPFamilyPolicy != nil {
			policy = *svc.Spec.IPFamilyPolicy
		}
		if !slices.Equal(svc.Spec.IPFamilies, tc.wantFamilies) || policy != tc.wantPolicy {
			t.Errorf("export families %v: derived Service asks %v %q, want %v %q", tc.families, svc.Spec.IPFamilies, policy, tc.wantFamilies, tc.wantPolicy)
		}
	}
}

// TestPlanFamilyNotSupported: an export of none of this cluster's IP
// families (an IPv6-only Service imported into an IPv4-only cluster) gets
// no derived Service, no ClusterSetIP and no derived slices, but keeps its
// MCS slices and says why; one sharing a family, or with families unknown
// on either side, is imported as before, even with a stale derived Service.
func TestPlanFamilyNotSupported(t *testing.T) {
	v4, v6 := corev1.IPv4Protocol, corev1.IPv6Protocol
	stale := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: derivedServiceName("web"), Namespace: "ns"},
		Spec: corev1.ServiceSpec{ClusterIPs: []string{"fd00:96::8"}, IPFamilies: []corev1.IPFamily{v6}}}
	for _, tc := range []struct {
		name            string
		export, local   []corev1.IPFamily
		derived         *corev1.Service
		wantUnsupported bool
	}{
		{"IPv6 export, IPv4 cluster", []corev1.IPFamily{v6}, []corev1.IPFamily{v4}, nil, true},
		{"IPv6 export, IPv4 cluster, a stale derived Service", []corev1.IPFamily{v6}, []corev1.IPFamily{v4}, stale, true},
		{"IPv4 export, IPv6 cluster", []corev1.IPFamily{v4}, []corev1.IPFamily{v6}, nil, true},
		{"dual-stack export, IPv4 cluster", []corev1.IPFamily{v6, v4}, []corev1.IPFamily{v4}, nil, false},
		{"IPv6 export, dual-stack cluster", []corev1.IPFamily{v6}, []corev1.IPFamily{v4, v6}, stale, false},
		{"cluster families unknown", []corev1.IPFamily{v6}, nil, nil, false},
		{"export families unknown", nil, []corev1.IPFamily{v4}, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := planExport("b", 1, brokerv1.ClusterSetIP, "")
			e.Spec.IPFamilies = tc.export
			p := planImport(importInput{Namespace: "ns", Name: "web", Local: "a", TrustUnclaimed: true, Families: tc.local,
				Exports: []*brokerv1.ExportedService{e}, Derived: tc.derived,
				Endpoints: map[string][]*discoveryv1.EndpointSlice{"b": planSlices("b", true)}})
			v := viewPlan(p)
			if got := p.FamilyNotSupported != ""; got != tc.wantUnsupported {
				t.Fatalf("FamilyNotSupported %q, want it set: %v", p.FamilyNotSupported, tc.wantUnsupported)
			}
			if !slices.Equal(v.mcs, []string{"b"}) {
				t.Errorf("MCS slices of %v, want b's", v.mcs)
			}
			if tc.wantUnsupported {
				if v.service || len(v.ips) != 0 || len(v.derived) != 0 {
					t.Errorf("an unsupported import planned a derived Service %v, ClusterSetIPs %v, derived slices %v", v.service, v.ips, v.derived)
				}
				for _, f := range append(tc.export, tc.local...) {
					if !strings.Contains(p.FamilyNotSupported, string(f)) {
						t.Errorf("the reason %q does not name %s", p.FamilyNotSupported, f)
					}
				}
				return
			}
			if !v.service || !slices.Equal(v.derived, []string{"b"}) {
				t.Errorf("derived Service %v, derived slices %v, want both", v.service, v.derived)
			}
		})
	}
}

// TestServiceFamilies: the families of the configured service CIDRs, in
// their order, each once.
func TestServiceFamilies(t *testing.T) {
	v4, v6 := corev1.IPv4Protocol, corev1.IPv6Protocol
	for _, tc := range []struct {
		cidrs []string
		want  []corev1.IPFamily
	}{
		{nil, nil},
		{[]string{"10.96.0.0/16"}, []corev1.IPFamily{v4}},
		{[]string{"fd00:96::/112", " 10.96.0.0/16"}, []corev1.IPFamily{v6, v4}},
		{[]string{"10.96.0.0/16", "10.97.0.0/16", "fd00:96::/112"}, []corev1.IPFamily{v4, v6}},
		{[]string{"not a range"}, nil},
	} {
		if got := serviceFamilies(tc.cidrs); !slices.Equal(got, tc.want) {
			t.Errorf("serviceFamilies(%q) = %v, want %v", tc.cidrs, got, tc.want)
		}
	}
}

// BenchmarkPlanImport plans one service exported by 1,000 clusters, each
// with one ready endpoint inside the pod range it claims: the import the
// scale benchmark's full members hold, replanned when one of them goes.
func BenchmarkPlanImport(b *testing.B) {
	in := importInput{Namespace: "ns", Name: "web", Local: "local", Endpoints: map[string][]*discoveryv1.EndpointSlice{}, Clusters: map[string]clusterState{}}
	for i := range 1000 {
		c := fmt.Sprintf("sim-%04d", i)
		in.Exports = append(in.Exports, planExport(c, i, brokerv1.ClusterSetIP, ""))
		s := planSlices(c, true)
		s[0].Endpoints[0].Addresses = []string{fmt.Sprintf("10.%d.%d.1", i/256, i%256)}
		in.Endpoints[c] = s
		in.Clusters[c] = clusterState{Claimed: true, PodCIDRs: []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("10.%d.%d.0/24", i/256, i%256))}}
	}
	b.ReportAllocs()
	for b.Loop() {
		if p := planImport(in); len(p.Slices) != 2000 {
			b.Fatalf("%d slices planned, want 2,000 (MCS and derived, one each per cluster)", len(p.Slices))
		}
	}
}
