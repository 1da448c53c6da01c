package translate

import (
	"encoding/json"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/isthmus-dev/isthmus/xds/model"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// clusterset is the small clusterset of the golden files: a and c in
// region eu, b in us; the local cluster is a.
func clusterset(mode model.Mode) (model.Local, map[string]*model.Cluster, []*model.Service) {
	local := model.Local{ClusterID: "a", Region: "eu", Zone: "eu-1", ClustersetDomain: "clusterset.isthmus", Mode: mode, IngressPort: 15443}
	clusters := map[string]*model.Cluster{
		"a": {ID: "a", Region: "eu", Zone: "eu-1", Gateways: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:15443")}, Healthy: true},
		"b": {ID: "b", Region: "us", Zone: "us-1", Gateways: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.2:15443")}, Healthy: true},
		"c": {ID: "c", Region: "eu", Zone: "eu-2", Gateways: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.3:15443")}, Healthy: false, Reason: "LeaseExpired"},
	}
	ep := func(ip string, ready bool, ports map[string]int32) model.Endpoint {
		return model.Endpoint{Address: netip.MustParseAddr(ip), Ready: ready, Ports: ports}
	}
	echo := &model.Service{
		Key:  model.Key{Namespace: "demo", Name: "echo"},
		Type: model.ClusterSetIP,
		Ports: []model.Port{
			{Name: "dns", Protocol: model.UDP, Port: 53, Egress: 16001},
			{Name: "http", Protocol: model.TCP, Port: 80, Egress: 16000},
		},
		Endpoints: map[string][]model.Endpoint{
			"a": {ep("10.240.0.10", true, map[string]int32{"http": 8080, "dns": 5353}), ep("10.240.0.11", false, map[string]int32{"http": 8080})},
			"b": {ep("10.241.0.10", true, map[string]int32{"http": 8080}), ep("10.241.0.11", true, map[string]int32{"http": 8080})},
			"c": {ep("10.242.0.10", true, map[string]int32{"http": 8080})},
		},
	}
	grpcSvc := &model.Service{
		Key:       model.Key{Namespace: "demo", Name: "greeter"},
		Type:      model.ClusterSetIP,
		Ports:     []model.Port{{Name: "grpc", Protocol: model.TCP, Port: 50051}},
		Endpoints: map[string][]model.Endpoint{"b": {ep("10.241.0.20", true, map[string]int32{"grpc": 50051})}},
		MTLS:      true,
	}
	headless := &model.Service{
		Key:       model.Key{Namespace: "db", Name: "pg"},
		Type:      model.Headless,
		Ports:     []model.Port{{Name: "", Protocol: model.TCP, Port: 5432}},
		Endpoints: map[string][]model.Endpoint{"a": {ep("10.240.0.30", true, map[string]int32{"": 5432})}},
	}
	return local, clusters, []*model.Service{echo, grpcSvc, headless}
}

func TestGolden(t *testing.T) {
	for _, mode := range []model.Mode{model.Gateway, model.Direct} {
		local, clusters, services := clusterset(mode)
		var bundles []*Bundle
		eds := map[string]types.Resource{}
		for _, s := range services {
			b, err := ForService(local, clusters, s)
			if err != nil {
				t.Fatal(err)
			}
			bundles = append(bundles, b)
			for n, e := range b.Endpoints {
				eds[n] = e
			}
		}
		id, roots := Secrets([]byte("CERT"), []byte("KEY"), []byte("ROOTS"))
		gw, err := GatewayResources(local, bundles, id, roots)
		if err != nil {
			t.Fatal(err)
		}
		gw[resource.SecretType] = nil // key material stays out of golden files
		golden(t, string(mode)+"-gateway-view.json", gw)
		golden(t, string(mode)+"-grpc-view.json", GRPCResources(bundles))
		golden(t, string(mode)+"-endpoints.json", map[string][]types.Resource{resource.EndpointType: values(eds)})
	}
}

func values(m map[string]types.Resource) []types.Resource {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]types.Resource, 0, len(m))
	for _, n := range names {
		out = append(out, m[n])
	}
	return out
}

// golden compares resources, as indented protojson sorted by type and
// name, with testdata/name.
func golden(t *testing.T, name string, res map[resource.Type][]types.Resource) {
	t.Helper()
	doc := map[string][]json.RawMessage{}
	for typ, rs := range res {
		sort.Slice(rs, func(i, j int) bool { return cachev3.GetResourceName(rs[i]) < cachev3.GetResourceName(rs[j]) })
		for _, r := range rs {
			b, err := protojson.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			doc[shortName(typ)] = append(doc[shortName(typ)], b)
		}
	}
	got, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, '\n')
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to write it)", err)
	}
	if string(got) != string(want) {
		t.Errorf("%s differs from the translation; review the diff and run go test -update if it is intended\n%s", path, firstDiff(string(want), string(got)))
	}
}

func shortName(typeURL string) string { return typeURL[strings.LastIndex(typeURL, ".")+1:] }

func firstDiff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := 0; i < len(al) && i < len(bl); i++ {
		if al[i] != bl[i] {
			return "line " + strconv.Itoa(i+1) + ":\n- " + al[i] + "\n+ " + bl[i]
		}
	}
	return "lengths differ"
}

// TestCLAShapesGRPCAccepts checks the rules gRPC-Go enforces on every
// assignment: contiguous priorities from 0, a weight on every locality,
// no address twice.
func TestCLAShapesGRPCAccepts(t *testing.T) {
	for _, mode := range []model.Mode{model.Gateway, model.Direct} {
		local, clusters, services := clusterset(mode)
		for _, s := range services {
			b, err := ForService(local, clusters, s)
			if err != nil {
				t.Fatal(err)
			}
			for name, cla := range b.Endpoints {
				checkCLA(t, name, cla)
			}
		}
	}
}

func checkCLA(t *testing.T, name string, cla *endpointv3.ClusterLoadAssignment) {
	t.Helper()
	seen := map[string]bool{}
	want := uint32(0)
	for _, l := range cla.Endpoints {
		if l.Priority != want && l.Priority != want+1 {
			t.Errorf("%s: priority %d after %d: gRPC NACKs gaps", name, l.Priority, want)
		}
		want = l.Priority
		if l.GetLoadBalancingWeight().GetValue() == 0 {
			t.Errorf("%s: locality %s has no weight: gRPC drops it", name, l.Locality.GetSubZone())
		}
		for _, e := range l.LbEndpoints {
			a := e.GetEndpoint().GetAddress().GetSocketAddress()
			k := a.GetAddress() + ":" + strconv.Itoa(int(a.GetPortValue()))
			if seen[k] {
				t.Errorf("%s: address %s twice: gRPC NACKs it", name, k)
			}
			seen[k] = true
		}
	}
}

func TestPriorities(t *testing.T) {
	local, clusters, services := clusterset(model.Gateway)
	echo := services[0]
	cla := OutboundCLA(local, clusters, echo, echo.Ports[1])
	type loc struct {
		cluster string
		prio    uint32
		weight  uint32
		health  corev3.HealthStatus
	}
	var got []loc
	for _, l := range cla.Endpoints {
		got = append(got, loc{l.Locality.SubZone, l.Priority, l.LoadBalancingWeight.GetValue(), l.LbEndpoints[0].HealthStatus})
	}
	want := []loc{
		{"a", 0, 1, corev3.HealthStatus_HEALTHY},   // local pods first, one ready
		{"c", 1, 1, corev3.HealthStatus_UNHEALTHY}, // same region, but its Lease expired
		{"b", 2, 2, corev3.HealthStatus_HEALTHY},   // other region, two ready pods
	}
	if len(got) != len(want) {
		t.Fatalf("localities %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("locality %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	// All local pods gone: the same region's cluster becomes priority 0.
	echo.Endpoints["a"] = nil
	cla = OutboundCLA(local, clusters, echo, echo.Ports[1])
	if cla.Endpoints[0].Locality.SubZone != "c" || cla.Endpoints[0].Priority != 0 {
		t.Errorf("without local pods, first locality = %s at %d", cla.Endpoints[0].Locality.SubZone, cla.Endpoints[0].Priority)
	}
}

func TestIngressOnlyForLocalExports(t *testing.T) {
	local, clusters, services := clusterset(model.Gateway)
	greeter := services[1] // exported from b only
	b, err := ForService(local, clusters, greeter)
	if err != nil {
		t.Fatal(err)
	}
	if len(b.IngressChains) != 0 {
		t.Errorf("a service not exported here got %d ingress chains", len(b.IngressChains))
	}
	res, err := GatewayResources(local, []*Bundle{b}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range res[resource.ListenerType] {
		if cachev3.GetResourceName(l) == IngressListener {
			t.Errorf("an ingress listener without chains (Envoy refuses it)")
		}
	}
}

func TestSecretsCarryPEM(t *testing.T) {
	id, roots := Secrets([]byte("C"), []byte("K"), []byte("R"))
	if string(id.GetTlsCertificate().GetPrivateKey().GetInlineBytes()) != "K" || string(roots.GetValidationContext().GetTrustedCa().GetInlineBytes()) != "R" {
		t.Fatal("secrets lost their contents")
	}
	for _, s := range []*tlsv3.Secret{id, roots} {
		if err := s.ValidateAll(); err != nil {
			t.Error(err)
		}
	}
}
