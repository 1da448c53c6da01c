package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"k8s.io/client-go/dynamic"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	kmetadata "k8s.io/client-go/metadata"
	"sigs.k8s.io/yaml"

	// The typed configs the bootstrap names, for protojson to resolve.
	_ "github.com/envoyproxy/go-control-plane/envoy/config/grpc_credential/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"

	"github.com/isthmus-dev/isthmus/cmd/internal/kube"
	"github.com/isthmus-dev/isthmus/dnsserver"
	"github.com/isthmus-dev/isthmus/mcs/agent"
	brokerclient "github.com/isthmus-dev/isthmus/mcs/api/broker/generated/clientset/versioned"
	"github.com/isthmus-dev/isthmus/mcs/hubquota"
	"github.com/isthmus-dev/isthmus/mcs/setup"
	"github.com/isthmus-dev/isthmus/tunnel"
	"github.com/isthmus-dev/isthmus/xds"
	xdsauth "github.com/isthmus-dev/isthmus/xds/auth"
	xdsidentity "github.com/isthmus-dev/isthmus/xds/identity"
	"github.com/isthmus-dev/isthmus/xds/model"
	"github.com/isthmus-dev/isthmus/xds/server"
	"github.com/isthmus-dev/isthmus/xds/source"
)

// gatewayBootstrap renders the chart in gateway mode and parses the
// Envoy bootstrap it holds, as Envoy would, into go-control-plane's type.
func gatewayBootstrap(t *testing.T) *bootstrapv3.Bootstrap {
	t.Helper()
	docs := renderChart(t, "dataplane=gateway")
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
	return &b
}

// TestChartGatewayNodeView: the xDS server's own classification gives
// the chart's gateway bootstrap node the gateway view of its cluster, and
// refuses it in another. charts/'s TestChartGatewayBootstrap checks the
// rest of the bootstrap.
func TestChartGatewayNodeView(t *testing.T) {
	b := gatewayBootstrap(t)
	if v, err := server.ViewOf(b.GetNode(), ids[chartMember]); err != nil || v != server.GatewayView {
		t.Errorf("the xDS server of %s gives the bootstrap's node view %q (%v), want %q", ids[chartMember], v, err, server.GatewayView)
	}
	if _, err := server.ViewOf(b.GetNode(), "a"); err == nil {
		t.Error("the xDS server of another cluster accepts the bootstrap's node")
	}
}

// checkChartGatewayNode connects to the xDS server at adsAddr over TLS,
// trusting only the clusterset's bundle, as an Envoy with the chart's
// bootstrap node would, and checks it is taken for a gateway; that the
// server issued the gateway's certificate from the CA Secret its chart
// identity may read; and that its chart identity may review tokens: a
// gRPC client with a token for isthmus-xds is served, one without is
// refused.
func checkChartGatewayNode(t *testing.T, ctx context.Context, adsAddr, metrics string, bundle []byte) {
	t.Helper()
	b := gatewayBootstrap(t)
	node := proto.Clone(b.GetNode()).(*corev3.Node)
	node.Id = "isthmus-gateway-6d9f7-x2x8q" // --service-node $(POD_NAME)
	// The server takes the chart's node for a gateway of this cluster, and
	// so refuses it here: the test connects from loopback, which is no pod
	// of the gateway Service, and the gateway view carries the gateway's
	// key. (A gateway pod's address is admitted: xds/server's
	// TestGatewayViewOnlyForGatewayPods.) The role, running on its chart
	// identity, could list the gateway Service's EndpointSlices, or it
	// would not have become ready.
	if _, err := firstResponse(ctx, adsAddr, bundle, "", node); err == nil || !strings.Contains(err.Error(), "no pod of the gateway Service") {
		t.Fatalf("the chart's gateway node from loopback: %v, want refused as no gateway pod", err)
	}
	grpcNode := &corev3.Node{Id: "client", Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
		server.MetadataRole: structpb.NewStringValue(string(server.GRPCView)), server.MetadataCluster: structpb.NewStringValue(ids[chartMember])}}}
	if _, err := firstResponse(ctx, adsAddr, bundle, "", grpcNode); status.Code(err) != codes.Unauthenticated {
		t.Errorf("a gRPC client without a token: %v, want Unauthenticated", err)
	}
	tok, err := clusters.Members[chartMember].Client.CoreV1().ServiceAccounts("isthmus-system").CreateToken(ctx, "isthmus-dns",
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{Audiences: []string{xdsauth.Audience}, ExpirationSeconds: ptrTo(int64(600))}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := firstResponse(ctx, adsAddr, bundle, tok.Status.Token, grpcNode); err != nil {
		t.Errorf("a gRPC client with a token for %s, reviewed by the chart identity: %v", xdsauth.Audience, err)
	}
	eventually(t, 10*time.Second, "the gateway's certificate issued from the CA Secret", func() error {
		_, body := get("http://" + metrics + "/metrics")
		if !strings.Contains(body, "isthmus_xds_identity_cert_expiry_timestamp_seconds{") {
			return fmt.Errorf("no certificate issued from the CA Secret")
		}
		if !strings.Contains(body, "isthmus_xds_refused_nodes_total 1") || !strings.Contains(body, `isthmus_xds_unauthenticated_streams_total{reason="no_token"} 1`) {
			return fmt.Errorf("the refusals are not counted")
		}
		return nil
	})
}

// firstResponse opens an ADS stream to addr over TLS trusting bundle,
// sending token if set, asks for listeners as n and returns the first
// response or the stream's end.
func firstResponse(ctx context.Context, addr string, bundle []byte, token string, n *corev3.Node) (*discoveryv3.DiscoveryResponse, error) {
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(bundle)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: roots})))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if token != "" {
		sctx = metadata.AppendToOutgoingContext(sctx, "authorization", "Bearer "+token)
	}
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(sctx)
	if err != nil {
		return nil, err
	}
	if err := st.Send(&discoveryv3.DiscoveryRequest{Node: n, TypeUrl: resource.ListenerType}); err != nil {
		return nil, err
	}
	return st.Recv()
}

// checkChartDNS asks the resolver running with its chart identity for
// the import the chart-identity agent made.
func checkChartDNS(t *testing.T, ctx context.Context, dnsAddr, ns string) {
	t.Helper()
	si, err := mcs(t, chartMember).MulticlusterV1beta1().ServiceImports(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil || len(si.Spec.IPs) == 0 {
		t.Fatalf("the import: %v %v", si, err)
	}
	host, port, _ := net.SplitHostPort(dnsAddr)
	eventually(t, 10*time.Second, "the resolver answers the import", func() error {
		out, err := exec.Command("dig", "@"+host, "-p", port, "+norec", "+short", "+time=2", "+tries=1", "web."+ns+".svc.clusterset.local", "A").Output()
		if err != nil {
			return err
		}
		if got := strings.TrimSpace(string(out)); got != si.Spec.IPs[0] {
			return fmt.Errorf("answer %q, want the ClusterSetIP %s", got, si.Spec.IPs[0])
		}
		return nil
	})
}

// TestChartDashboardMetricsRegistered: every metric the dashboard's
// queries use is one the components register, as the roles wire them;
// the names come from the collectors' own descriptions, so a series never
// yet observed counts. charts/'s TestChartDashboard checks the panels.
func TestChartDashboardMetricsRegistered(t *testing.T) {
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
	registered := registeredMetrics(t)
	metricName := regexp.MustCompile(`\bisthmus_[a-z0-9_]+`)
	n := 0
	for _, p := range dash.Panels {
		for _, q := range p.Targets {
			for _, name := range metricName.FindAllString(q.Expr, -1) {
				n++
				if !registered[name] && !registered[histogramBase(name)] {
					t.Errorf("panel %q queries %s, which no component registers", p.Title, name)
				}
			}
		}
	}
	if n == 0 {
		t.Error("the dashboard queries no isthmus_ metric")
	}
}

// histogramBase is a histogram's name for one of its series' names.
func histogramBase(n string) string {
	for _, s := range []string{"_bucket", "_sum", "_count"} {
		if b, ok := strings.CutSuffix(n, s); ok {
			return b
		}
	}
	return n
}

// descRecorder is a Registerer noting the name of every metric a
// collector describes.
type descRecorder struct{ names map[string]bool }

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

func (r *descRecorder) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc)
	go func() { c.Describe(ch); close(ch) }()
	for d := range ch {
		if m := fqName.FindStringSubmatch(d.String()); m != nil {
			r.names[m[1]] = true
		}
	}
	return nil
}

func (r *descRecorder) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		_ = r.Register(c)
	}
}

func (r *descRecorder) Unregister(prometheus.Collector) bool { return true }

// registeredMetrics builds every component the roles run, the way the
// roles do, with a registerer that notes what they register. Nothing is
// started; the clients are member c's, unused.
func registeredMetrics(t *testing.T) map[string]bool {
	t.Helper()
	rec := &descRecorder{names: map[string]bool{}}
	log := slog.New(slog.DiscardHandler)
	c, err := kube.NewClients(clusters.Members[chartMember].Config, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := agent.New(agent.Config{ClusterID: "c", BrokerNamespace: "isthmus-broker", Local: c.Kube, LocalMCS: c.MCS,
		Broker: c.Kube, BrokerClient: brokerclient.NewForConfigOrDie(c.Config), BrokerDynamic: dynamic.NewForConfigOrDie(c.Config), Log: log, Registry: rec}); err != nil {
		t.Fatal(err)
	}
	dnsserver.NewMetrics(rec, func() time.Duration { return 0 })
	_, err = tunnel.New(tunnel.Config{ClusterID: "c", BrokerNamespace: "isthmus-broker", Device: "isthmus0", Implementation: tunnel.Auto,
		MTU: 1420, ListenPort: 51820, Endpoint: netip.MustParseAddrPort("192.0.2.1:51820"), ProbePort: 51821, Keepalive: 10 * time.Second,
		Resync: 30 * time.Second, ProbeInterval: time.Second, StatusInterval: 10 * time.Second, RouteProtocol: 158, RouteTable: 254,
		KeyNamespace: "isthmus-system", KeySecret: "isthmus-tunnel-key", Broker: c.Dynamic, Local: c.Kube, Log: log, Registry: rec})
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxFor(t, time.Minute)
	srv, err := server.New(ctx, server.Config{ClusterID: "c", Log: log, Registry: rec})
	if err != nil {
		t.Fatal(err)
	}
	lm := model.Local{ClusterID: "c", Mode: model.Direct, IngressPort: 15443}
	src := source.New(source.Config{Local: lm, Kube: c.Kube, MCS: c.MCS, Broker: c.Kube, BrokerRecords: c.Dynamic, BrokerNamespace: "isthmus-broker", Log: log},
		func(source.Change) {})
	if _, err := xds.New(xds.Config{Local: lm, Models: src, Server: srv, Registry: rec, Log: log}); err != nil {
		t.Fatal(err)
	}
	xdsidentity.NewMetrics(rec)
	if _, err := hubquota.New(hubquota.Config{Metadata: kmetadata.NewForConfigOrDie(c.Config), Broker: c.BrokerAPI, Namespace: "isthmus-broker", Log: log, Registry: rec}); err != nil {
		t.Fatalf("the hub's record counter: %v", err)
	}
	// The broker credential, from a kubeconfig file holding a token.
	kc := filepath.Join(t.TempDir(), "broker.kubeconfig")
	token := "e30." + base64.RawURLEncoding.EncodeToString([]byte(`{"exp":2000000000,"iat":1999999400,"sub":"system:serviceaccount:isthmus-broker:isthmus-member-c"}`)) + ".sig"
	if err := os.WriteFile(kc, []byte("apiVersion: v1\nkind: Config\nclusters: [{name: b, cluster: {server: 'https://192.0.2.1'}}]\nusers: [{name: c, user: {token: '"+token+"'}}]\ncontexts: [{name: b, context: {cluster: b, user: c}}]\ncurrent-context: b\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, cred, err := setup.NewBrokerCredential(ctx, setup.CredentialConfig{Path: kc, Log: log, Registry: rec}); err != nil || cred == nil {
		t.Fatalf("the broker credential: %v", err)
	}
	if _, err := setup.NewPolicyCheck(setup.PolicyCheckConfig{Broker: c.Kube, Namespace: "isthmus-broker", Log: log, Registry: rec}); err != nil {
		t.Fatalf("the broker policy check: %v", err)
	}
	// 47 today: a recorder that saw next to nothing would pass any query.
	if len(rec.names) < 40 {
		t.Fatalf("only %d metrics registered: %v", len(rec.names), rec.names)
	}
	return rec.names
}

// TestOperationsDocListsEveryMetric: docs/operations.md names every
// isthmus_ metric the components register, so the operators' list cannot
// fall behind the code.
func TestOperationsDocListsEveryMetric(t *testing.T) {
	clusterset(t)
	doc, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	for name := range registeredMetrics(t) {
		if strings.HasPrefix(name, "isthmus_") && !strings.Contains(string(doc), "`"+name+"`") {
			t.Errorf("docs/operations.md does not list %s", name)
		}
	}
}
