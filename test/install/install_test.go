package install

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"
)

// TestInstallOnRealNodes runs the README's install steps on two members
// with real nodes — the image from the tree, the broker chart, join, the
// member chart with its defaults (direct mode) — and then what a user does
// first: export a Service in member1 and reach it from a pod in member2 by
// its clusterset.local name, resolved by the pod's own resolv.conf (member1's
// CoreDNS has the isthmus plugin, member2's forwards to `isthmus dns`), the
// connection going pod → kube-proxy → WireGuard → pod.
func TestInstallOnRealNodes(t *testing.T) {
	began := time.Now()
	s := sharedSet(t)
	t.Logf("installed in %v; clusterset memory %d MiB", time.Since(began).Round(time.Millisecond), s.MemoryMiB())
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	m1, m2 := s.Members[0], s.Members[1]

	// Every pod of the chart ran under the chart's identity, probes and
	// security context; a role's missing right would have shown as a
	// crash with its reason (WaitReady names it).
	for _, m := range s.Members {
		pods, err := m.Client.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		roles := map[string]int{}
		for _, p := range pods.Items {
			roles[p.Labels["app.kubernetes.io/component"]]++
		}
		restarts, err := Restarts(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range restarts {
			t.Error(r)
		}
		if roles["agent"] != 2 || roles["dns"] != 2 || roles["xds"] != 2 || roles["tunnel"] != 1 {
			t.Errorf("%s: chart pods by role %v, want agent 2, dns 2, xds 2, tunnel 1", m.Name, roles)
		}
	}

	began = time.Now()
	server := RunTestServer(ctx, t, m1, "default", "web")
	t.Logf("%s: test server Ready in %v", m1.Name, time.Since(began).Round(time.Millisecond))
	client := RunTestServer(ctx, t, m2, "default", "client")

	mc, err := mcsclient.NewForConfig(m1.Config)
	if err != nil {
		t.Fatal(err)
	}
	began = time.Now()
	if _, err := mc.MulticlusterV1beta1().ServiceExports("default").Create(ctx, &mcsv1beta1.ServiceExport{
		ObjectMeta: metav1.ObjectMeta{Name: "web"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	name := "web.default.svc.clusterset.local"
	out := Eventually(ctx, t, m2, client, func(out string) bool { return strings.Contains(out, "200 hello from "+server.Name) },
		"/testserver", "get", "http://"+name+"/")
	t.Logf("%s: export -> a pod in %s reached it by name through the tunnel in %v: %q", m1.Name, m2.Name, time.Since(began).Round(time.Millisecond), out)

	// The name resolves to member2's ClusterSetIP, in its Service range,
	// from member2's resolver (forwarding) and member1's (the plugin).
	mc2, err := mcsclient.NewForConfig(m2.Config)
	if err != nil {
		t.Fatal(err)
	}
	si, err := mc2.MulticlusterV1beta1().ServiceImports("default").Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(si.Spec.IPs) == 0 || !m2.ServiceCIDR.Contains(netip.MustParseAddr(si.Spec.IPs[0])) {
		t.Fatalf("%s: ServiceImport IPs %v, want one in %s", m2.Name, si.Spec.IPs, m2.ServiceCIDR)
	}
	if got := Eventually(ctx, t, m2, client, func(out string) bool { return strings.TrimSpace(out) == si.Spec.IPs[0] },
		"/testserver", "resolve", name); strings.TrimSpace(got) != si.Spec.IPs[0] {
		t.Errorf("%s resolves %s to %q", m2.Name, name, got)
	}
	Eventually(ctx, t, m1, server, func(out string) bool { return strings.TrimSpace(out) != "" }, "/testserver", "resolve", name)
	// The cluster's own names still answer, from the same resolv.conf.
	Eventually(ctx, t, m1, server, func(out string) bool { return strings.Contains(out, "200 hello from") },
		"/testserver", "get", "http://web.default.svc.cluster.local/")

	// The request crossed the tunnel with the client pod's own address:
	// the server logged member2's pod IP, not a node's.
	logs, err := m1.Client.CoreV1().Pods("default").GetLogs(server.Name, &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(logs), "from "+client.Status.PodIP+":") {
		t.Errorf("the server did not see the client pod's address %s:\n%s", client.Status.PodIP, logs)
	}
	for _, tm := range s.Timings {
		t.Logf("timing: %-60s %v", tm.Step, tm.Took.Round(time.Millisecond))
	}
}
