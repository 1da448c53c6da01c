package charts_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	grpccredv3 "github.com/envoyproxy/go-control-plane/envoy/config/grpc_credential/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/isthmus-dev/isthmus/xds/auth"

	// The typed configs the bootstrap names, for protojson to resolve.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

var update = flag.Bool("update", false, "rewrite the member chart's golden files and the isthmus-broker chart's templates")

// golden compares got with the member chart's testdata/name, or rewrites
// it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	dir := filepath.Join(memberChart, "testdata")
	path := filepath.Join(dir, name)
	if *update {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(want, got) {
		t.Errorf("%s differs from what the chart renders (%v); go test ./charts -run TestChart -update rewrites it:\n%s", path, err, got)
	}
}

// gatewayBootstrap renders the chart in gateway mode and parses the
// Envoy bootstrap it holds, as Envoy would, into go-control-plane's type.
func gatewayBootstrap(t *testing.T, set ...string) (*bootstrapv3.Bootstrap, []byte, []*unstructured.Unstructured) {
	t.Helper()
	docs := renderChart(t, append([]string{"dataplane=gateway"}, set...)...)
	cm := find(docs, "ConfigMap", "isthmus-gateway-bootstrap")
	if cm == nil {
		t.Fatal("no bootstrap ConfigMap")
	}
	text, _, _ := unstructured.NestedString(cm.Object, "data", "envoy.yaml")
	j, err := yaml.YAMLToJSON([]byte(text))
	if err != nil {
		t.Fatalf("the bootstrap is no YAML: %v", err)
	}
	var b bootstrapv3.Bootstrap
	if err := (protojson.UnmarshalOptions{}).Unmarshal(j, &b); err != nil {
		t.Fatalf("the bootstrap is no Envoy v3 Bootstrap: %v\n%s", err, text)
	}
	if err := b.ValidateAll(); err != nil {
		t.Fatalf("the bootstrap does not validate: %v", err)
	}
	return &b, []byte(text), docs
}

// TestChartGatewayBootstrap: the Envoy bootstrap is a valid v3 Bootstrap
// (and the golden file); it speaks ADS with the v3 resource API to the
// rendered isthmus-xds Service over TLS, verified against the trust bundle
// the gateway mounts, and sends the gateway's projected token for the
// audience isthmus-xds; its admin interface listens on 127.0.0.1 only. That the xDS server gives its node
// the gateway view is cmd/isthmus's TestChartGatewayNodeView.
func TestChartGatewayBootstrap(t *testing.T) {
	b, text, docs := gatewayBootstrap(t)
	golden(t, "gateway-bootstrap.yaml", text)

	if a := b.GetAdmin().GetAddress().GetSocketAddress(); a.GetAddress() != "127.0.0.1" {
		t.Errorf("admin listens on %q", a.GetAddress())
	}
	dyn := b.GetDynamicResources()
	ads := dyn.GetAdsConfig()
	if ads.GetApiType() != corev3.ApiConfigSource_GRPC || ads.GetTransportApiVersion() != corev3.ApiVersion_V3 || len(ads.GetGrpcServices()) != 1 {
		t.Fatalf("ADS config %v", ads)
	}
	for name, src := range map[string]*corev3.ConfigSource{"cds": dyn.GetCdsConfig(), "lds": dyn.GetLdsConfig()} {
		if src.GetAds() == nil || src.GetResourceApiVersion() != corev3.ApiVersion_V3 {
			t.Errorf("%s config %v, want ADS with the v3 resource API", name, src)
		}
		// Ready (the health listener up) only with a configuration.
		if src.GetInitialFetchTimeout() == nil || src.GetInitialFetchTimeout().AsDuration() != 0 {
			t.Errorf("%s config waits %v for the first response, want no timeout", name, src.GetInitialFetchTimeout())
		}
	}
	checkADSCredentials(t, ads.GetGrpcServices()[0], docs)
	// The ingress port the xDS server opens is the one the gateway's
	// Service and container expose.
	gw := find(docs, "Service", "isthmus-gateway")
	gwPorts, _, _ := unstructured.NestedSlice(gw.Object, "spec", "ports")
	if p := fmt.Sprint(gwPorts[0].(map[string]any)["port"]); p != "15443" {
		t.Errorf("gateway Service port %s", p)
	}
}

// stubDNSIP is the dns Service address of the first stub golden file;
// dnsserver/coredns's TestChartStubDomain rewrites exactly this address
// to run the block in the real CoreDNS.
const stubDNSIP = "10.99.0.53"

// TestChartCoreDNSStub: the stub-domain server block sends the clusterset
// zone (and the per-cluster zone when on) to the dns Service's fixed
// address, or to a placeholder NOTES.txt explains.
func TestChartCoreDNSStub(t *testing.T) {
	for _, tc := range []struct {
		golden string
		set    []string
	}{
		{"coredns-stub.txt", []string{"dns.clusterIP=" + stubDNSIP}},
		{"coredns-stub-placeholder.txt", []string{"dns.clusterZone=clusters.local", "coredns.cache=0"}},
	} {
		cm := find(renderChart(t, tc.set...), "ConfigMap", "isthmus-coredns-stub")
		if cm == nil {
			t.Fatal("no stub ConfigMap")
		}
		text, _, _ := unstructured.NestedString(cm.Object, "data", "Corefile")
		golden(t, tc.golden, []byte(text))
	}
}

// TestChartDashboard: every panel of the dashboard queries isthmus_
// metrics, and together they show what the chart promises. That each
// metric is one the components register is cmd/isthmus's
// TestChartDashboardMetricsRegistered.
func TestChartDashboard(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(memberChart, "files", "dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Type, Title string
			Targets     []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("the dashboard is no JSON: %v", err)
	}
	metricName := regexp.MustCompile(`\bisthmus_[a-z0-9_]+`)
	used := map[string]bool{}
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			names := metricName.FindAllString(q.Expr, -1)
			if len(names) == 0 {
				t.Errorf("panel %q queries no isthmus_ metric: %s", p.Title, q.Expr)
			}
			for _, n := range names {
				used[n] = true
			}
		}
	}
	// What the dashboard must show, per the chart's promise.
	for _, prefix := range []string{"isthmus_agent_broker_connected", "isthmus_tunnel_peer_state", "isthmus_tunnel_peer_last_handshake",
		"isthmus_tunnel_probe_rtt", "isthmus_xds_push_latency", "isthmus_agent_reconcile", "isthmus_dns_queries_total",
		"isthmus_dns_query_duration", "isthmus_xds_connected_nodes", "isthmus_xds_pushes_total", "isthmus_xds_nacks_total"} {
		found := false
		for n := range used {
			found = found || strings.HasPrefix(n, prefix)
		}
		if !found {
			t.Errorf("the dashboard shows no %s", prefix)
		}
	}
}

// checkADSCredentials: ADS dials the isthmus-xds Service by the name its
// serving certificate carries, over TLS with the roots of the ConfigMap
// `isthmusctl join` writes, and sends, from a file the kubelet keeps
// fresh, a token of the gateway's ServiceAccount for the audience the
// xDS server reviews tokens for.
func checkADSCredentials(t *testing.T, svc *corev3.GrpcService, docs []*unstructured.Unstructured) {
	t.Helper()
	g := svc.GetGoogleGrpc()
	if g == nil {
		t.Fatalf("ADS goes through %v, want Envoy's Google gRPC client (the one that takes call credentials)", svc)
	}
	xds := find(docs, "Service", "isthmus-xds")
	ports, _, _ := unstructured.NestedSlice(xds.Object, "spec", "ports")
	if want := fmt.Sprintf("%s.%s.svc:%v", xds.GetName(), xds.GetNamespace(), ports[0].(map[string]any)["port"]); g.GetTargetUri() != want {
		t.Errorf("ADS dials %q, want the Service %s", g.GetTargetUri(), want)
	}
	mounts := gatewayMounts(t, docs)
	roots := g.GetChannelCredentials().GetSslCredentials().GetRootCerts().GetFilename()
	if v := mounts[filepath.Dir(roots)]; v == nil || v["configMap"] == nil || v["configMap"].(map[string]any)["name"] != "isthmus-trust-bundle" {
		t.Errorf("ADS trusts %q, which is not in the trust bundle ConfigMap the gateway mounts (%v)", roots, v)
	}
	if g.GetCredentialsFactoryName() != "envoy.grpc_credentials.file_based_metadata" || len(g.GetCallCredentials()) != 1 {
		t.Fatalf("ADS call credentials %v from %q", g.GetCallCredentials(), g.GetCredentialsFactoryName())
	}
	var fb grpccredv3.FileBasedMetadataConfig
	if err := g.GetCallCredentials()[0].GetFromPlugin().GetTypedConfig().UnmarshalTo(&fb); err != nil {
		t.Fatal(err)
	}
	if fb.GetHeaderKey() != "authorization" || fb.GetHeaderPrefix() != "Bearer " {
		t.Errorf("the token goes as %q: %q…", fb.GetHeaderKey(), fb.GetHeaderPrefix())
	}
	token := fb.GetSecretData().GetFilename()
	v := mounts[filepath.Dir(token)]
	sources, _, _ := unstructured.NestedSlice(v, "projected", "sources")
	if len(sources) != 1 {
		t.Fatalf("the token %q is not in a projected volume of the gateway: %v", token, v)
	}
	sat, _ := sources[0].(map[string]any)["serviceAccountToken"].(map[string]any)
	if sat["audience"] != auth.Audience || sat["path"] != filepath.Base(token) {
		t.Errorf("the token %q is %v, want a ServiceAccount token for %q", token, sat, auth.Audience)
	}
}

// gatewayMounts maps each mount path of the gateway's Envoy to its volume.
func gatewayMounts(t *testing.T, docs []*unstructured.Unstructured) map[string]map[string]any {
	t.Helper()
	d := find(docs, "Deployment", "isthmus-gateway")
	spec, _, _ := unstructured.NestedMap(d.Object, "spec", "template", "spec")
	volumes := map[string]map[string]any{}
	for _, v := range spec["volumes"].([]any) {
		volumes[v.(map[string]any)["name"].(string)] = v.(map[string]any)
	}
	out := map[string]map[string]any{}
	for _, m := range spec["containers"].([]any)[0].(map[string]any)["volumeMounts"].([]any) {
		m := m.(map[string]any)
		out[m["mountPath"].(string)] = volumes[m["name"].(string)]
	}
	return out
}
