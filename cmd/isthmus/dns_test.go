package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/isthmus-dev/isthmus/mcs/api/crds"
	"github.com/isthmus-dev/isthmus/test/cluster"
	"github.com/isthmus-dev/isthmus/test/freeport"
)

func TestDNSRoleFlagErrors(t *testing.T) {
	for _, args := range [][]string{
		{"--ttl", "4000"},
		{"--ttl", "0"},
		{"--max-udp-size", "100"},
		{"--cluster-zone", "x.clusterset.local"},
		{"--ns-addr", "not-an-ip"},
		{"--domain", "a..b", "--kubeconfig", "/nonexistent"},
		{"extra-arg"},
		{"--no-such-flag"},
		{"--kubeconfig", "/nonexistent/kubeconfig"},
	} {
		err := runDNS(context.Background(), args, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err == nil {
			t.Errorf("%v: accepted", args)
		}
	}
}

// freePort is a loopback address outside the ephemeral range, free a
// moment ago (see test/freeport: dig may share an ephemeral one).
func freePort(t *testing.T) string {
	t.Helper()
	return freeport.Addr(t)
}

func get(url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func waitUntil(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestDNSRole runs `isthmus dns` against a real member apiserver: not ready
// until the MCS CRDs exist and the informers sync, then answering dig,
// with its metrics.
func TestDNSRole(t *testing.T) {
	if _, err := exec.LookPath("dig"); err != nil {
		t.Fatal("dig not installed (Debian bind9-dnsutils; make deps installs it)")
	}
	cs := cluster.Start(t, cluster.Options{Members: 1})
	m := cs.Members[0]
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dnsAddr, metricsAddr := freePort(t), freePort(t)
	done := make(chan error, 1)
	go func() {
		done <- runDNS(ctx, []string{"--kubeconfig", m.Kubeconfig, "--listen", dnsAddr, "--metrics-addr", metricsAddr, "--ttl", "7"},
			slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	waitUntil(t, "/healthz answers", func() bool { c, _ := get("http://" + metricsAddr + "/healthz"); return c == 200 })
	// No ServiceImport CRD yet: the informers cannot sync.
	time.Sleep(time.Second)
	if c, body := get("http://" + metricsAddr + "/readyz"); c != http.StatusServiceUnavailable || !strings.Contains(body, "not synced") {
		t.Errorf("readyz before the CRDs exist: %d %s", c, body)
	}
	host, port, _ := net.SplitHostPort(dnsAddr)
	digOut := func(args ...string) string {
		out, err := exec.Command("dig", append([]string{"@" + host, "-p", port, "+norec", "+time=2", "+tries=1"}, args...)...).Output()
		if err != nil {
			t.Fatalf("dig: %v", err)
		}
		return strings.Join(strings.Fields(string(out)), " ")
	}
	if out := digOut("echo.demo.svc.clusterset.local", "A"); !strings.Contains(out, "status: SERVFAIL") {
		t.Errorf("before the first sync: %s", out)
	}

	list, err := crds.Member()
	if err != nil {
		t.Fatal(err)
	}
	if err := m.InstallCRDs(ctx, list); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "/readyz after the sync", func() bool { c, _ := get("http://" + metricsAddr + "/readyz"); return c == 200 })

	if _, err := m.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	mc, err := mcsclient.NewForConfig(m.Config)
	if err != nil {
		t.Fatal(err)
	}
	si := &mcsv1beta1.ServiceImport{
		ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "echo"},
		Spec: mcsv1beta1.ServiceImportSpec{Type: mcsv1beta1.ClusterSetIP, IPs: []string{"10.100.0.7"},
			Ports: []mcsv1beta1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}}},
	}
	if _, err := mc.MulticlusterV1beta1().ServiceImports("demo").Create(ctx, si, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the import resolves", func() bool {
		return strings.Contains(digOut("echo.demo.svc.clusterset.local", "A"), "echo.demo.svc.clusterset.local. 7 IN A 10.100.0.7")
	})
	digOut("nope.demo.svc.clusterset.local", "A")

	_, metrics := get("http://" + metricsAddr + "/metrics")
	for _, want := range []string{
		`isthmus_dns_queries_total{rcode="NOERROR",type="A"}`,
		`isthmus_dns_queries_total{rcode="NXDOMAIN",type="A"} 1`,
		`isthmus_dns_queries_total{rcode="SERVFAIL",type="A"} 1`,
		`isthmus_dns_index_services 1`,
		`isthmus_dns_query_duration_seconds_count`,
		`isthmus_dns_sync_age_seconds`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("role ended with %v", err)
	}
}

// TestDNSDomainFlag: --domain names the DNS domain; the old --zone still
// does, with a deprecation warning, and the two may not disagree. A bad
// domain reaching the resolver's configuration shows which value it got.
func TestDNSDomainFlag(t *testing.T) {
	tests := []struct {
		args     []string
		wantErr  string
		wantWarn bool
	}{
		{[]string{"--domain", "a..b"}, "configuring the resolver", false},
		{[]string{"--zone", "a..b"}, "configuring the resolver", true},
		{[]string{"--domain", "example.test"}, "loading this cluster's kubeconfig", false},
		{[]string{"--zone", "example.test"}, "loading this cluster's kubeconfig", true},
		{[]string{"--domain", "example.test", "--zone", "other.test"}, "disagree", true},
		{[]string{"--zone", "a..b", "--domain", "a..b"}, "configuring the resolver", true},
	}
	for _, tt := range tests {
		var logs strings.Builder
		args := append([]string{"dns", "--kubeconfig", "/dev/null", "--metrics-addr", ""}, tt.args...)
		err := run(context.Background(), args, slog.New(slog.NewTextHandler(&logs, nil)), io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%v: %v, want an error containing %q", tt.args, err, tt.wantErr)
		}
		if warned := strings.Contains(logs.String(), "--zone (ISTHMUS_ZONE) is deprecated; use --domain"); warned != tt.wantWarn {
			t.Errorf("%v: deprecation warning %v, want %v; log:\n%s", tt.args, warned, tt.wantWarn, logs.String())
		}
	}
}
