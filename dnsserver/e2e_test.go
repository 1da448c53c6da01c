package dnsserver

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/isthmus-dev/isthmus/mcs/api/crds"
	"github.com/isthmus-dev/isthmus/test/cluster"
)

// TestEndToEnd runs the resolver against a real kube-apiserver: objects
// written there appear in answers from real dig and Go's resolver, and
// the server keeps answering when the apiserver stops.
func TestEndToEnd(t *testing.T) {
	if _, err := exec.LookPath("dig"); err != nil {
		t.Fatal("dig not installed (Debian bind9-dnsutils; make deps installs it)")
	}
	cs := cluster.Start(t, cluster.Options{Members: 1})
	m := cs.Members[0]
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	installMemberCRDs(ctx, t, m)
	if _, err := m.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	mcs, err := mcsclient.NewForConfig(m.Config)
	if err != nil {
		t.Fatal(err)
	}

	b, err := NewBuilder(Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	h, _ := NewHandler(b.Config(), nil)
	src, err := NewSource(SourceConfig{Kube: m.Client, MCS: mcs, Builder: b, Handler: h, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	srcDone := make(chan error, 1)
	go func() { srcDone <- src.Run(ctx) }()
	addr := startServer(t, h)
	waitFor(t, "ready after the first sync", 30*time.Second, func() bool { return src.Ready() == nil })
	// An empty but synced index: the zone answers.
	waitDig(t, addr, "dns-version.clusterset.local", "TXT", `"1.0.0"`)

	ttl := time.Duration(b.Config().TTL) * time.Second
	imports := mcs.MulticlusterV1beta1().ServiceImports("demo")
	slicesAPI := m.Client.DiscoveryV1().EndpointSlices("demo")

	// Create an import: it resolves within the TTL.
	if _, err := imports.Create(ctx, imp("demo", "echo", mcsv1beta1.ClusterSetIP, []string{"10.100.0.10"}, port("http", corev1.ProtocolTCP, 80)), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitDigWithin(t, ttl, addr, "echo.demo.svc.clusterset.local", "A", "status: NOERROR", "IN A 10.100.0.10")
	waitDigWithin(t, ttl, addr, "_http._tcp.echo.demo.svc.clusterset.local", "SRV", "IN SRV 0 10 80 echo.demo.svc.clusterset.local.")

	// A headless import with one endpoint, then a second one added.
	if _, err := imports.Create(ctx, imp("demo", "db", mcsv1beta1.Headless, nil, port("tcp-5432", corev1.ProtocolTCP, 5432)), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	es := slice("demo", "db-member1", "db", "member1", discoveryv1.AddressTypeIPv4,
		[]discoveryv1.EndpointPort{eport("tcp-5432", 5432)}, ep{"db-0", ptr(true), []string{"10.241.0.10"}})
	es.Labels[discoveryv1.LabelManagedBy] = "isthmus.dev"
	if es, err = slicesAPI.Create(ctx, es, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitDigWithin(t, ttl, addr, "db.demo.svc.clusterset.local", "A", "IN A 10.241.0.10")
	// A tenant of the namespace forges "member2's" endpoint with the MCS
	// labels but without the agent's managed-by: never served.
	forged := slice("demo", "db-forged", "db", "member2", discoveryv1.AddressTypeIPv4,
		[]discoveryv1.EndpointPort{eport("tcp-5432", 5432)}, ep{"db-9", ptr(true), []string{"10.241.0.99"}})
	if _, err := slicesAPI.Create(ctx, forged, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{"10.241.0.11"}, Hostname: ptr("db-1"), Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}})
	if _, err = slicesAPI.Update(ctx, es, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitDigWithin(t, ttl, addr, "db.demo.svc.clusterset.local", "A", "IN A 10.241.0.10", "IN A 10.241.0.11")
	waitDigWithin(t, ttl, addr, "db-1.member1.db.demo.svc.clusterset.local", "A", "IN A 10.241.0.11")
	// The forged slice was written before the update just served, so the
	// index has seen it, and left it out.
	if out := dig(t, addr, "db.demo.svc.clusterset.local", "A"); strings.Contains(out, "10.241.0.99") {
		t.Errorf("a slice without the agent's managed-by label was served:\n%s", out)
	}
	r := goResolver(addr)
	ips, err := r.LookupHost(ctx, "db.demo.svc.clusterset.local")
	slices.Sort(ips)
	if err != nil || !slices.Equal(ips, []string{"10.241.0.10", "10.241.0.11"}) {
		t.Errorf("Go resolver: %v %v", ips, err)
	}
	if _, srvs, err := r.LookupSRV(ctx, "tcp-5432", "tcp", "db.demo.svc.clusterset.local"); err != nil || len(srvs) != 2 {
		t.Errorf("Go resolver SRV: %v %v", srvs, err)
	}

	// Delete the import: NXDOMAIN within the TTL.
	if err := imports.Delete(ctx, "echo", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitDigWithin(t, ttl, addr, "echo.demo.svc.clusterset.local", "A", "status: NXDOMAIN")
	if _, err := r.LookupHost(ctx, "echo.demo.svc.clusterset.local"); !isNotFound(err) {
		t.Errorf("Go resolver after delete: %v, want not found", err)
	}

	// The apiserver goes away: answers and readiness stay.
	m.StopAPIServer()
	if _, err := m.Client.Discovery().ServerVersion(); err == nil {
		t.Fatal("apiserver still answering after StopAPIServer")
	}
	for range 3 {
		waitDig(t, addr, "db.demo.svc.clusterset.local", "A", "IN A 10.241.0.10", "IN A 10.241.0.11")
		waitDig(t, addr, "echo.demo.svc.clusterset.local", "A", "status: NXDOMAIN")
		if err := src.Ready(); err != nil {
			t.Errorf("not ready while the apiserver is away: %v", err)
		}
		time.Sleep(time.Second)
	}
	if ips, err := r.LookupHost(ctx, "db-0.member1.db.demo.svc.clusterset.local"); err != nil || len(ips) != 1 {
		t.Errorf("Go resolver with the apiserver away: %v %v", ips, err)
	}

	// It comes back: the informers catch up with changes made since.
	if err := m.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	if err := slicesAPI.Delete(ctx, "db-member1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitDigWithin(t, 30*time.Second, addr, "db.demo.svc.clusterset.local", "A", "status: NXDOMAIN")

	cancel()
	if err := <-srcDone; err != nil {
		t.Errorf("source: %v", err)
	}
}

func isNotFound(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de) && de.IsNotFound
}

func installMemberCRDs(ctx context.Context, t *testing.T, m *cluster.Cluster) {
	t.Helper()
	list, err := crds.Member()
	if err != nil {
		t.Fatal(err)
	}
	if err := m.InstallCRDs(ctx, list); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, what string, d time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting until %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitDigWithin polls with real dig until every want is in the answer;
// the bound is the TTL: a change must reach answers before caches of the
// previous answer expire.
func waitDigWithin(t *testing.T, d time.Duration, addr, name, qtype string, want ...string) {
	t.Helper()
	var out string
	deadline := time.Now().Add(d)
	for {
		out = strings.Join(strings.Fields(dig(t, addr, "+nocmd", "+nostats", name, qtype)), " ")
		if !slices.ContainsFunc(want, func(w string) bool { return !strings.Contains(out, w) }) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("dig %s %s: after %v still no %q in:\n%s", name, qtype, d, want, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func waitDig(t *testing.T, addr, name, qtype string, want ...string) {
	t.Helper()
	waitDigWithin(t, 0, addr, name, qtype, want...)
}
