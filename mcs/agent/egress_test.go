package agent

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/merge"
)

func tcp(ports ...int32) []portKey {
	var out []portKey
	for _, p := range ports {
		out = append(out, portKey{corev1.ProtocolTCP, p})
	}
	return out
}

// egressOf renders an assignment as the annotation would, plus what is
// missing.
func egressOf(a egressAssignment) string {
	s := brokerv1.FormatEgressPorts(a.Ports)
	if len(a.Missing) > 0 {
		var m []string
		for _, k := range a.Missing {
			m = append(m, k.String())
		}
		s += " missing " + strings.Join(m, ",")
	}
	return s
}

// TestEgressAssign plays sequences of operations on a small range and
// checks each result.
func TestEgressAssign(t *testing.T) {
	type op struct {
		do   string // assign, commit, release
		key  string
		want []portKey
		// For assign: the assignment; for commit and release: the imports
		// to retry, joined by commas.
		expect string
		// For assign: whether the import has just started waiting.
		newlyExhausted bool
	}
	tests := []struct {
		name     string
		min, max int32
		ops      []op
	}{
		{"lowest free, in port order", 100, 109, []op{
			{do: "assign", key: "ns/a", want: tcp(80, 443), expect: "TCP/443=101,TCP/80=100"},
			{do: "assign", key: "ns/b", want: tcp(80), expect: "TCP/80=102"},
		}},
		{"stable when assigned again and when ports are added", 100, 109, []op{
			{do: "assign", key: "ns/a", want: tcp(80), expect: "TCP/80=100"},
			{do: "assign", key: "ns/b", want: tcp(80), expect: "TCP/80=101"},
			{do: "assign", key: "ns/a", want: tcp(80), expect: "TCP/80=100"},
			{do: "assign", key: "ns/a", want: tcp(8080, 80), expect: "TCP/8080=102,TCP/80=100"},
		}},
		{"same number, other protocol: its own egress port", 100, 109, []op{
			{do: "assign", key: "ns/dns", want: []portKey{{corev1.ProtocolUDP, 53}, {corev1.ProtocolTCP, 53}}, expect: "TCP/53=101,UDP/53=100"},
		}},
		{"a port listed twice gets one egress port", 100, 109, []op{
			{do: "assign", key: "ns/a", want: tcp(80, 80), expect: "TCP/80=100"},
			{do: "assign", key: "ns/b", want: tcp(80), expect: "TCP/80=101"},
		}},
		{"a dropped port is not reused before the import's annotation is written", 100, 109, []op{
			{do: "assign", key: "ns/a", want: tcp(80, 443), expect: "TCP/443=101,TCP/80=100"},
			{do: "assign", key: "ns/a", want: tcp(443), expect: "TCP/443=101"},
			{do: "assign", key: "ns/b", want: tcp(80), expect: "TCP/80=102"},
			{do: "commit", key: "ns/a"},
			{do: "assign", key: "ns/c", want: tcp(80), expect: "TCP/80=100"},
		}},
		{"a dropped port wanted again before the write is taken back", 100, 109, []op{
			{do: "assign", key: "ns/a", want: tcp(80, 443), expect: "TCP/443=101,TCP/80=100"},
			{do: "assign", key: "ns/a", want: tcp(443), expect: "TCP/443=101"},
			{do: "assign", key: "ns/a", want: tcp(443, 80), expect: "TCP/443=101,TCP/80=100"},
			{do: "commit", key: "ns/a"},
			{do: "assign", key: "ns/b", want: tcp(80), expect: "TCP/80=102"},
		}},
		{"a headless import gives all its ports up", 100, 109, []op{
			{do: "assign", key: "ns/a", want: tcp(80), expect: "TCP/80=100"},
			{do: "assign", key: "ns/a", want: nil, expect: ""},
			{do: "commit", key: "ns/a"},
			{do: "assign", key: "ns/b", want: tcp(80), expect: "TCP/80=100"},
		}},
		{"release frees for reuse, lowest first", 100, 109, []op{
			{do: "assign", key: "ns/a", want: tcp(80), expect: "TCP/80=100"},
			{do: "assign", key: "ns/b", want: tcp(80), expect: "TCP/80=101"},
			{do: "assign", key: "ns/c", want: tcp(80), expect: "TCP/80=102"},
			{do: "release", key: "ns/b"},
			{do: "assign", key: "ns/d", want: tcp(80, 81), expect: "TCP/80=101,TCP/81=103"},
		}},
		{"exhaustion: all or nothing, reported once, retried on release", 100, 102, []op{
			{do: "assign", key: "ns/a", want: tcp(80, 81), expect: "TCP/80=100,TCP/81=101"},
			{do: "assign", key: "ns/b", want: tcp(80, 81), expect: " missing TCP/80,TCP/81", newlyExhausted: true},
			{do: "assign", key: "ns/b", want: tcp(80, 81), expect: " missing TCP/80,TCP/81"},
			{do: "assign", key: "ns/c", want: tcp(80), expect: "TCP/80=102"},
			{do: "assign", key: "ns/d", want: tcp(80), expect: " missing TCP/80", newlyExhausted: true},
			{do: "release", key: "ns/c", expect: "ns/b,ns/d"},
			{do: "assign", key: "ns/b", want: tcp(80, 81), expect: " missing TCP/80,TCP/81"},
			{do: "assign", key: "ns/d", want: tcp(80), expect: "TCP/80=102"},
			{do: "release", key: "ns/a", expect: "ns/b"},
			{do: "assign", key: "ns/b", want: tcp(80, 81), expect: "TCP/80=100,TCP/81=101"},
			{do: "release", key: "ns/gone", expect: ""},
		}},
		{"exhaustion keeps the ports already held", 100, 101, []op{
			{do: "assign", key: "ns/a", want: tcp(80), expect: "TCP/80=100"},
			{do: "assign", key: "ns/b", want: tcp(80), expect: "TCP/80=101"},
			{do: "assign", key: "ns/a", want: tcp(80, 81), expect: "TCP/80=100 missing TCP/81", newlyExhausted: true},
			{do: "assign", key: "ns/a", want: tcp(80), expect: "TCP/80=100"},
			{do: "assign", key: "ns/a", want: tcp(80, 81), expect: "TCP/80=100 missing TCP/81", newlyExhausted: true},
		}},
		{"a one-port range", 16000, 16000, []op{
			{do: "assign", key: "ns/a", want: tcp(80), expect: "TCP/80=16000"},
			{do: "assign", key: "ns/b", want: tcp(80), expect: " missing TCP/80", newlyExhausted: true},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEgressAllocator(tt.min, tt.max)
			for i, o := range tt.ops {
				switch o.do {
				case "assign":
					got := e.assign(o.key, o.want)
					if egressOf(got) != o.expect || got.NewlyExhausted != o.newlyExhausted {
						t.Fatalf("op %d: assign(%s, %v) = %q (newly exhausted %v), want %q (%v)",
							i, o.key, o.want, egressOf(got), got.NewlyExhausted, o.expect, o.newlyExhausted)
					}
					if got.Complete() != (len(got.Missing) == 0) {
						t.Fatalf("op %d: Complete disagrees with Missing", i)
					}
				case "commit":
					if got := strings.Join(e.committed(o.key), ","); got != o.expect {
						t.Fatalf("op %d: committed(%s) retries %q, want %q", i, o.key, got, o.expect)
					}
				case "release":
					if got := strings.Join(e.release(o.key), ","); got != o.expect {
						t.Fatalf("op %d: release(%s) retries %q, want %q", i, o.key, got, o.expect)
					}
				}
				checkOwners(t, e)
			}
		})
	}
}

// checkOwners checks the allocator's invariants: every port it hands out
// is in range and has exactly one owner, which lists it, and every port
// below the search's start is taken.
func checkOwners(t *testing.T, e *egressAllocator) {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	for p := e.min; p < e.lowest; p++ {
		if e.owner[p] == "" {
			t.Fatalf("port %d is free, below the search start %d", p, e.lowest)
		}
	}
	held := map[int32]string{}
	for _, m := range []map[string]map[portKey]int32{e.active, e.releasing} {
		for key, ports := range m {
			for k, p := range ports {
				if p < e.min || p > e.max {
					t.Fatalf("%s %s holds %d, outside %d-%d", key, k, p, e.min, e.max)
				}
				if other, ok := held[p]; ok {
					t.Fatalf("port %d held by %s and %s", p, other, key)
				}
				held[p] = key
			}
		}
	}
	if len(held) != len(e.owner) {
		t.Fatalf("%d ports held, %d owned", len(held), len(e.owner))
	}
	for p, key := range held {
		if e.owner[p] != key {
			t.Fatalf("port %d held by %s, owned by %q", p, key, e.owner[p])
		}
	}
}

// TestEgressConcurrent: imports reconciled at once by several workers,
// all racing for the lowest free port, never share one.
func TestEgressConcurrent(t *testing.T) {
	e := newEgressAllocator(20000, 20999)
	var wg sync.WaitGroup
	results := make([]egressAssignment, 200)
	for i := range results {
		wg.Go(func() { results[i] = e.assign(fmt.Sprintf("ns/svc%d", i), tcp(80, 443)) })
	}
	wg.Wait()
	seen := map[int32]bool{}
	for i, r := range results {
		if !r.Complete() || len(r.Ports) != 2 {
			t.Fatalf("import %d: %q", i, egressOf(r))
		}
		for _, p := range r.Ports {
			if seen[p.Egress] {
				t.Fatalf("port %d given twice", p.Egress)
			}
			seen[p.Egress] = true
		}
	}
	for p := int32(20000); p < 20400; p++ {
		if !seen[p] {
			t.Fatalf("port %d skipped: allocation is not lowest-free", p)
		}
	}
	checkOwners(t, e)
}

// TestEgressSeed: allocations read back from annotations are kept; a port
// claimed twice stays with the older import; ports outside the range are
// given up; nothing seeded is handed out again.
func TestEgressSeed(t *testing.T) {
	at := func(s int) time.Time { return time.Unix(int64(s), 0) }
	ports := func(s string) []brokerv1.EgressPort {
		p, err := brokerv1.ParseEgressPorts(s)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	e := newEgressAllocator(100, 109)
	var dropped []string
	for _, d := range e.seed([]egressClaim{
		{key: "ns/young", created: at(20), ports: ports("TCP/80=101,TCP/81=103")},
		{key: "ns/old", created: at(10), ports: ports("TCP/80=101")},
		{key: "ns/far", created: at(5), ports: ports("TCP/80=5000,TCP/443=100")},
		{key: "ns/twin-b", created: at(30), ports: ports("TCP/80=105")},
		{key: "ns/twin-a", created: at(30), ports: ports("TCP/80=105")},
		{key: "ns/twice", created: at(40), ports: ports("TCP/80=106,TCP/80=107")},
	}) {
		dropped = append(dropped, d.key+" "+d.why)
	}
	wantDropped := []string{
		"ns/far TCP/80=5000: outside the egress range 100-109",
		"ns/young TCP/80=101: already held by the older import ns/old",
		"ns/twin-b TCP/80=105: already held by the older import ns/twin-a",
		"ns/twice TCP/80=107: the import lists TCP/80 twice",
	}
	if !slices.Equal(dropped, wantDropped) {
		t.Errorf("seed gave up\n%s\nwant\n%s", strings.Join(dropped, "\n"), strings.Join(wantDropped, "\n"))
	}
	checkOwners(t, e)
	for _, tc := range []struct {
		key  string
		want []portKey
		exp  string
	}{
		{"ns/old", tcp(80), "TCP/80=101"},
		{"ns/far", tcp(80, 443), "TCP/443=100,TCP/80=102"},
		{"ns/young", tcp(80, 81), "TCP/80=104,TCP/81=103"},
		{"ns/twin-a", tcp(80), "TCP/80=105"},
		{"ns/twin-b", tcp(80), "TCP/80=107"},
		{"ns/twice", tcp(80), "TCP/80=106"},
		{"ns/new", tcp(80), "TCP/80=108"},
	} {
		if got := egressOf(e.assign(tc.key, tc.want)); got != tc.exp {
			t.Errorf("after seeding, assign(%s) = %q, want %q", tc.key, got, tc.exp)
		}
	}
	checkOwners(t, e)
	if inUse, waiting := e.usage(); inUse != 9 || waiting != 0 {
		t.Errorf("usage %d in use, %d waiting", inUse, waiting)
	}
}

func TestParseEgressPortRange(t *testing.T) {
	for _, tc := range []struct {
		in       string
		min, max int32
		err      string
	}{
		{in: "16000-31999", min: 16000, max: 31999},
		{in: " 20000-20000 ", min: 20000, max: 20000},
		{in: "16000", err: "want MIN-MAX"},
		{in: "a-b", err: `"a" is not a port`},
		{in: "0-10", err: `"0" is not a port`},
		{in: "100-70000", err: `"70000" is not a port`},
		{in: "200-100", err: "the first port is above the last"},
		{in: "15000-16000", err: "holds the gateway's mTLS ingress port 15443"},
		{in: "-5-10", err: `"" is not a port`},
	} {
		min, max, err := ParseEgressPortRange(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseEgressPortRange(%q) = %d, %d, %v; want an error with %q", tc.in, min, max, err, tc.err)
			}
			continue
		}
		if err != nil || min != tc.min || max != tc.max {
			t.Errorf("ParseEgressPortRange(%q) = %d, %d, %v; want %d-%d", tc.in, min, max, err, tc.min, tc.max)
		}
	}
}

func FuzzParseEgressPortRange(f *testing.F) {
	for _, s := range []string{"16000-31999", "1-1", "15443-15443", "65535-1", "x", "-", "1--2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		min, max, err := ParseEgressPortRange(s)
		if err != nil {
			return
		}
		if min < 1 || max > 65535 || min > max || (min <= brokerv1.DefaultGatewayIngressPort && brokerv1.DefaultGatewayIngressPort <= max) {
			t.Fatalf("ParseEgressPortRange(%q) accepted %d-%d", s, min, max)
		}
		again, again2, err := ParseEgressPortRange(fmt.Sprintf("%d-%d", min, max))
		if err != nil || again != min || again2 != max {
			t.Fatalf("%d-%d does not read back: %d-%d, %v", min, max, again, again2, err)
		}
	})
}

func TestCheckGatewayConfig(t *testing.T) {
	for _, tc := range []struct {
		cfg Config
		err string
	}{
		{cfg: Config{}},
		{cfg: Config{Dataplane: "gateway"}},
		{cfg: Config{Dataplane: "tunnel"}, err: `data plane "tunnel"`},
		{cfg: Config{Dataplane: "gateway", GatewayNamespace: "Bad_NS", GatewayName: "gw"}, err: "gateway Service namespace"},
		{cfg: Config{Dataplane: "gateway", GatewayNamespace: "ns", GatewayName: "1gw"}, err: "gateway Service name"},
		{cfg: Config{Dataplane: "gateway", EgressPortMin: 15000, EgressPortMax: 16000}, err: "mTLS ingress port"},
	} {
		cfg := tc.cfg
		err := checkGatewayConfig(&cfg)
		if tc.err == "" {
			if err != nil {
				t.Errorf("%+v: %v", tc.cfg, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%+v: %v, want an error with %q", tc.cfg, err, tc.err)
		}
	}
	cfg := Config{Dataplane: "gateway"}
	if err := checkGatewayConfig(&cfg); err != nil || cfg.GatewayNamespace != "isthmus-system" || cfg.GatewayName != "isthmus-gateway" ||
		cfg.EgressPortMin != brokerv1.DefaultEgressPortMin || cfg.EgressPortMax != brokerv1.DefaultEgressPortMax {
		t.Errorf("defaults: %+v, %v", cfg, err)
	}
	if cfg := (Config{}); checkGatewayConfig(&cfg) != nil || cfg.Dataplane != brokerv1.DataplaneDirect {
		t.Errorf("empty data plane is not direct: %q", cfg.Dataplane)
	}
}

// TestGatewaySlices: the derived Service's slices in gateway mode list the
// gateway's ready pods of each of the Service's families, once each, with
// every service port numbered as its egress port; an incomplete
// allocation or no ready pod of the Service's families gives none (the
// caller then falls back to direct mode).
func TestGatewaySlices(t *testing.T) {
	yes, no := true, false
	ep := func(addr string, ready *bool) discoveryv1.Endpoint {
		return discoveryv1.Endpoint{Addresses: []string{addr}, Conditions: discoveryv1.EndpointConditions{Ready: ready}, NodeName: new("node-" + addr)}
	}
	gwSlice := func(name string, fam discoveryv1.AddressType, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
		return &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "isthmus-system",
			Labels: map[string]string{discoveryv1.LabelServiceName: "isthmus-gateway"}}, AddressType: fam, Endpoints: eps}
	}
	r := merge.Result{Type: brokerv1.ClusterSetIP, Ports: []brokerv1.ServicePort{
		{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}, {Name: "grpc", Protocol: corev1.ProtocolTCP, Port: 50051}}}
	full := &egressAssignment{Ports: []brokerv1.EgressPort{{Protocol: "TCP", Port: 80, Egress: 16001}, {Protocol: "TCP", Port: 50051, Egress: 16000}}}
	partial := &egressAssignment{Ports: full.Ports[:1], Missing: []portKey{{corev1.ProtocolTCP, 50051}}}
	derived := func(fams ...corev1.IPFamily) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "derived-x", Namespace: "ns"}, Spec: corev1.ServiceSpec{IPFamilies: fams}}
	}
	twoFamilies := []*discoveryv1.EndpointSlice{
		gwSlice("gw-1", discoveryv1.AddressTypeIPv4, ep("10.0.0.2", &yes), ep("10.0.0.3", &no), ep("10.0.0.1", nil)),
		gwSlice("gw-2", discoveryv1.AddressTypeIPv4, ep("10.0.0.2", &yes)), // the same pod in a second slice
		gwSlice("gw-3", discoveryv1.AddressTypeIPv6, ep("fd00::1", &yes)),
	}
	tests := []struct {
		name    string
		gateway []*discoveryv1.EndpointSlice
		svc     *corev1.Service
		as      *egressAssignment
		want    []string // per slice: name family addresses
	}{
		{"IPv4 service", twoFamilies, derived(corev1.IPv4Protocol), full, []string{"derived-x.gateway-ipv4 IPv4 [10.0.0.1 10.0.0.2]"}},
		{"dual-stack service", twoFamilies, derived(corev1.IPv6Protocol, corev1.IPv4Protocol), full,
			[]string{"derived-x.gateway-ipv6 IPv6 [fd00::1]", "derived-x.gateway-ipv4 IPv4 [10.0.0.1 10.0.0.2]"}},
		{"IPv6 service, gateway has IPv4 only", twoFamilies[:2], derived(corev1.IPv6Protocol), full, nil},
		{"no ready gateway pod", []*discoveryv1.EndpointSlice{gwSlice("gw-1", discoveryv1.AddressTypeIPv4, ep("10.0.0.3", &no))}, derived(corev1.IPv4Protocol), full, nil},
		{"no gateway slice at all", nil, derived(corev1.IPv4Protocol), full, nil},
		{"a port without an egress port", twoFamilies, derived(corev1.IPv4Protocol), partial, nil},
		{"direct mode", twoFamilies, derived(corev1.IPv4Protocol), nil, nil},
	}
	udp := r
	udp.Ports = append(append([]brokerv1.ServicePort{}, r.Ports...), brokerv1.ServicePort{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{byService: serviceIndex})
			for _, s := range tt.gateway {
				if err := idx.Add(s); err != nil {
					t.Fatal(err)
				}
			}
			a := &Agent{cfg: Config{Dataplane: brokerv1.DataplaneGateway, GatewayNamespace: "isthmus-system", GatewayName: "isthmus-gateway"}, localSlices: idx}
			got := gatewaySlices("ns", "web", tt.svc, r, tt.as, a.gatewayEndpoints())
			var desc []string
			for _, s := range got {
				var addrs []string
				for _, e := range s.Endpoints {
					addrs = append(addrs, e.Addresses...)
					if e.Conditions.Ready == nil || !*e.Conditions.Ready || e.NodeName == nil || *e.NodeName != "node-"+e.Addresses[0] {
						t.Errorf("endpoint %+v", e)
					}
				}
				desc = append(desc, fmt.Sprintf("%s %s %v", s.Name, s.AddressType, addrs))
				var ports []string
				for _, p := range s.Ports {
					ports = append(ports, fmt.Sprintf("%s/%s/%d", *p.Name, *p.Protocol, *p.Port))
				}
				if strings.Join(ports, ",") != "http/TCP/16001,grpc/TCP/16000" {
					t.Errorf("ports %v: want each service port numbered as its egress port", ports)
				}
				if s.Labels[discoveryv1.LabelServiceName] != "derived-x" || s.Labels[labelDerivedFor] != "web" || s.Labels[labelSliceRole] != roleGateway ||
					s.Labels[discoveryv1.LabelManagedBy] != brokerv1.ManagedBy || s.Labels[brokerv1.LabelSourceCluster] != "" {
					t.Errorf("labels %v", s.Labels)
				}
			}
			if !slices.Equal(desc, tt.want) {
				t.Errorf("gateway slices %q, want %q", desc, tt.want)
			}
		})
	}
	t.Run("a UDP port: the gateway cannot carry it, the import stays direct", func(t *testing.T) {
		a := &Agent{cfg: Config{Dataplane: brokerv1.DataplaneGateway, GatewayNamespace: "isthmus-system", GatewayName: "isthmus-gateway"},
			localSlices: cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{byService: serviceIndex})}
		for _, s := range twoFamilies {
			if err := a.localSlices.Add(s); err != nil {
				t.Fatal(err)
			}
		}
		if got := gatewaySlices("ns", "web", derived(corev1.IPv4Protocol), udp, full, a.gatewayEndpoints()); got != nil {
			t.Errorf("an import with a UDP port got gateway slices %v", got)
		}
	})
}

func TestGatewayCarries(t *testing.T) {
	tcpPort := brokerv1.ServicePort{Protocol: corev1.ProtocolTCP, Port: 80}
	for _, tt := range []struct {
		name string
		r    merge.Result
		want bool
	}{
		{"TCP ClusterSetIP", merge.Result{Type: brokerv1.ClusterSetIP, Ports: []brokerv1.ServicePort{tcpPort}}, true},
		{"headless", merge.Result{Type: brokerv1.Headless, Ports: []brokerv1.ServicePort{tcpPort}}, false},
		{"with UDP", merge.Result{Type: brokerv1.ClusterSetIP, Ports: []brokerv1.ServicePort{tcpPort, {Protocol: corev1.ProtocolUDP, Port: 53}}}, false},
		{"SCTP", merge.Result{Type: brokerv1.ClusterSetIP, Ports: []brokerv1.ServicePort{{Protocol: corev1.ProtocolSCTP, Port: 9}}}, false},
		{"no ports", merge.Result{Type: brokerv1.ClusterSetIP}, false},
	} {
		if got := gatewayCarries(tt.r); got != tt.want {
			t.Errorf("%s: gatewayCarries = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// BenchmarkEgressAssign allocates two ports each for 7,000 imports, as a
// first switch to gateway mode would, in the default range.
func BenchmarkEgressAssign(b *testing.B) {
	keys := make([]string, 7000)
	for i := range keys {
		keys[i] = fmt.Sprintf("ns/svc%d", i)
	}
	for b.Loop() {
		e := newEgressAllocator(brokerv1.DefaultEgressPortMin, brokerv1.DefaultEgressPortMax)
		for _, k := range keys {
			if !e.assign(k, tcp(80, 443)).Complete() {
				b.Fatal("range full")
			}
		}
	}
}
