package isthmus

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/whoami"
	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/isthmus-dev/isthmus/mcs/api/crds"
	"github.com/isthmus-dev/isthmus/test/cluster"
	"github.com/isthmus-dev/isthmus/test/freeport"
)

// The minimal CoreDNS of this test: the dns server type with bind, our
// plugin and whoami (for names outside our zone), nothing else.
func init() {
	dnsserver.Directives = append([]string{"bind", Name}, dnsserver.Directives...)
}

type corefileInput string

func (c corefileInput) Body() []byte       { return []byte(c) }
func (c corefileInput) Path() string       { return "Corefile" }
func (c corefileInput) ServerType() string { return "dns" }

// TestPluginInCoreDNS starts a CoreDNS server with the plugin against a
// real member apiserver and queries it with real dig.
func TestPluginInCoreDNS(t *testing.T) {
	if _, err := exec.LookPath("dig"); err != nil {
		t.Fatal("dig not installed (Debian bind9-dnsutils)")
	}
	cs := cluster.Start(t, cluster.Options{Members: 1})
	m := cs.Members[0]
	ctx := context.Background()
	installCRDs(t, ctx, m)
	if _, err := m.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	mc, err := mcsclient.NewForConfig(m.Config)
	if err != nil {
		t.Fatal(err)
	}
	imports := mc.MulticlusterV1beta1().ServiceImports("demo")
	for _, si := range []*mcsv1beta1.ServiceImport{
		{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "echo"}, Spec: mcsv1beta1.ServiceImportSpec{
			Type: mcsv1beta1.ClusterSetIP, IPs: []string{"10.100.0.7"}, Ports: []mcsv1beta1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}}}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "db"}, Spec: mcsv1beta1.ServiceImportSpec{
			Type: mcsv1beta1.Headless, Ports: []mcsv1beta1.ServicePort{{Name: "pg", Protocol: corev1.ProtocolTCP, Port: 5432}}}},
	} {
		if _, err := imports.Create(ctx, si, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	ready := true
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "db-member1", Labels: map[string]string{
			mcsv1beta1.LabelServiceName: "db", mcsv1beta1.LabelSourceCluster: "member1",
			"endpointslice.kubernetes.io/managed-by": "isthmus.dev"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.241.0.5"}, Hostname: ptr("db-0"), Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
	}
	if _, err := m.Client.DiscoveryV1().EndpointSlices("demo").Create(ctx, es, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// A fixed port outside the ephemeral range (see test/freeport: dig may
	// be given an ephemeral server port and hear its own query).
	port := freeport.Port(t)
	corefile := fmt.Sprintf(`clusterset.local:%[2]s example.org:%[2]s {
    bind 127.0.0.1
    isthmus clusterset.local {
        kubeconfig %[1]s
        ttl 7
    }
    whoami
}
`, m.Kubeconfig, port)
	caddy.Quiet, dnsserver.Quiet = true, true
	inst, err := caddy.Start(corefileInput(corefile))
	if err != nil {
		t.Fatalf("starting CoreDNS: %v", err)
	}
	defer inst.Stop()
	addr, tcpPort := net.JoinHostPort("127.0.0.1", port), port

	c := &dns.Client{Timeout: 2 * time.Second}
	ask := func(name string, qt uint16) *dns.Msg {
		q := new(dns.Msg)
		q.SetQuestion(name, qt)
		r, _, err := c.Exchange(q, addr)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return r
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		r := ask("echo.demo.svc.clusterset.local.", dns.TypeA)
		if r.Rcode == dns.RcodeSuccess && len(r.Answer) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never answered: %v", r)
		}
		time.Sleep(100 * time.Millisecond)
	}
	host, port := addr[:strings.LastIndex(addr, ":")], addr[strings.LastIndex(addr, ":")+1:]
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"echo.demo.svc.clusterset.local", "A"}, []string{"echo.demo.svc.clusterset.local. 7 IN A 10.100.0.7", "flags: qr aa"}},
		{[]string{"db-0.member1.db.demo.svc.clusterset.local", "A"}, []string{"IN A 10.241.0.5"}},
		{[]string{"_http._tcp.echo.demo.svc.clusterset.local", "SRV"}, []string{"IN SRV 0 10 80 echo.demo.svc.clusterset.local."}},
		{[]string{"dns-version.clusterset.local", "TXT"}, []string{`"1.0.0"`}},
		{[]string{"nope.demo.svc.clusterset.local", "A"}, []string{"status: NXDOMAIN", "IN SOA ns.dns.clusterset.local."}},
		{[]string{"+edns=1", "+noednsneg", "echo.demo.svc.clusterset.local", "A"}, []string{"status: BADVERS"}},
		{[]string{"+tcp", "-p", tcpPort, "echo.demo.svc.clusterset.local", "A"}, []string{"IN A 10.100.0.7"}},
		// Outside our zone: the next plugin answers.
		{[]string{"example.org", "A"}, []string{"_udp.example.org."}},
	} {
		out, err := exec.Command("dig", append([]string{"@" + host, "-p", port, "+norec", "+time=2", "+tries=1"}, tc.args...)...).Output()
		if err != nil {
			t.Fatalf("dig %v: %v", tc.args, err)
		}
		flat := strings.Join(strings.Fields(string(out)), " ")
		for _, w := range tc.want {
			if !strings.Contains(flat, w) {
				t.Errorf("dig %v lacks %q:\n%s", tc.args, w, out)
			}
		}
	}
}

func ptr[T any](v T) *T { return &v }

func installCRDs(t *testing.T, ctx context.Context, m *cluster.Cluster) {
	t.Helper()
	list, err := crds.Member()
	if err != nil {
		t.Fatal(err)
	}
	if err := m.InstallCRDs(ctx, list); err != nil {
		t.Fatal(err)
	}
}
