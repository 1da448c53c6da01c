package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/isthmus-dev/isthmus/mcs/setup"
	"github.com/isthmus-dev/isthmus/test/cluster"
)

// TestDualStack runs `isthmus agent` in a clusterset that mixes a
// dual-stack member (a) with an IPv4-only one (b), joined with both
// families' ranges, and `isthmus dns` in a. A PreferDualStack Service
// exported from a is imported in a with a ClusterSetIP of each family from
// a's ranges, in their order, and in b with an IPv4 one (b's apiserver
// would refuse a Service asking for IPv6); both hold a's endpoints of both
// families, as a's claim covers them. a's resolver answers A and AAAA with
// the ClusterSetIPs, and a headless export's A and AAAA with the pods'.
// An IPv6-only export is imported in a with an IPv6 ClusterSetIP and in b
// with none, its Ready condition False for IPFamilyNotSupported.
func TestDualStack(t *testing.T) {
	if _, err := exec.LookPath("dig"); err != nil {
		t.Fatal("dig not installed (Debian bind9-dnsutils; make deps installs it)")
	}
	cs := cluster.Start(t, cluster.Options{Broker: true, Members: 2, DualStack: []bool{true}})
	ctx := ctxFor(t, 4*time.Minute)
	hub, err := setup.NewClients(cs.Broker.Config)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := setup.InstallBroker(ctx, hub, setup.BrokerOptions{}, &out); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	dsIDs := []string{"a", "b"}
	for i, m := range cs.Members {
		member, err := setup.NewClients(m.Config)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := setup.Join(ctx, hub, member, setup.JoinOptions{ClusterID: dsIDs[i],
			PodCIDRs: prefixes(m.PodCIDRs), ServiceCIDRs: prefixes(m.ServiceCIDRs)}, &out); err != nil {
			t.Fatal(err)
		}
		runRole(t, "agent", []role{agentRole()}, log.With("member", dsIDs[i]), "--kubeconfig", m.Kubeconfig,
			"--pod-cidrs", strings.Join(prefixes(m.PodCIDRs), ","), "--service-cidrs", strings.Join(prefixes(m.ServiceCIDRs), ","),
			"--metrics-addr", freePort(t))
	}
	a, b := cs.Members[0], cs.Members[1]
	dnsAddr := freePort(t)
	runRole(t, "dns", nil, log.With("member", "a", "role", "dns"), "--kubeconfig", a.Kubeconfig, "--listen", dnsAddr, "--metrics-addr", freePort(t))

	const ns = "ds"
	for _, m := range cs.Members {
		if _, err := m.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	dualWorkload(t, ctx, a, ns, "web", false)
	dualWorkload(t, ctx, a, ns, "db", true)

	podIPs := map[corev1.IPFamily]string{}
	eventually(t, propagation, "a's pod has an address of each family", func() error {
		pods, err := a.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=db"})
		if err != nil || len(pods.Items) != 1 || len(pods.Items[0].Status.PodIPs) != 2 {
			return fmt.Errorf("pods %v (%v)", pods, err)
		}
		for _, ip := range pods.Items[0].Status.PodIPs {
			podIPs[family(ip.IP)] = ip.IP
		}
		return nil
	})

	for i, m := range cs.Members {
		wantFamilies := []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}[:len(m.ServiceCIDRs)]
		eventually(t, propagation, fmt.Sprintf("the dual-stack import in %s", dsIDs[i]), func() error {
			si, err := mcsClient(t, m).MulticlusterV1beta1().ServiceImports(ns).Get(ctx, "web", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if !slices.Equal(si.Spec.IPFamilies, wantFamilies) || len(si.Spec.IPs) != len(wantFamilies) {
				return fmt.Errorf("ClusterSetIPs %v families %v, want one of each of %v", si.Spec.IPs, si.Spec.IPFamilies, wantFamilies)
			}
			for j, ip := range si.Spec.IPs {
				if !m.ServiceCIDRs[j].Contains(netip.MustParseAddr(ip)) {
					return fmt.Errorf("ClusterSetIP %s outside %s", ip, m.ServiceCIDRs[j])
				}
			}
			return mcsSlicesOfBothFamilies(ctx, m, ns, "web")
		})
	}

	// An IPv6-only export: a imports it with an IPv6 ClusterSetIP, b (IPv4
	// only) can give it none and says so on the ServiceImport.
	single := corev1.IPFamilyPolicySingleStack
	if _, err := a.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "v6"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"}, IPFamilyPolicy: &single,
			IPFamilies: []corev1.IPFamily{corev1.IPv6Protocol}, Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := mcsClient(t, a).MulticlusterV1beta1().ServiceExports(ns).Create(ctx,
		&mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Name: "v6"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for i, m := range cs.Members {
		wantReason := []string{string(mcsv1beta1.ServiceImportReasonReady), string(mcsv1beta1.ServiceImportReasonIPFamilyNotSupported)}[i]
		eventually(t, propagation, fmt.Sprintf("the IPv6-only import in %s", dsIDs[i]), func() error {
			si, err := mcsClient(t, m).MulticlusterV1beta1().ServiceImports(ns).Get(ctx, "v6", metav1.GetOptions{})
			if err != nil {
				return err
			}
			ready := meta.FindStatusCondition(si.Status.Conditions, string(mcsv1beta1.ServiceImportConditionReady))
			if ready == nil || ready.Reason != wantReason {
				return fmt.Errorf("Ready condition %+v, want reason %s", ready, wantReason)
			}
			if wantReason == string(mcsv1beta1.ServiceImportReasonReady) {
				if len(si.Spec.IPs) != 1 || !m.ServiceCIDRs[1].Contains(netip.MustParseAddr(si.Spec.IPs[0])) {
					return fmt.Errorf("ClusterSetIPs %v, want one in %s", si.Spec.IPs, m.ServiceCIDRs[1])
				}
				return nil
			}
			if ready.Status != metav1.ConditionFalse || len(si.Spec.IPs) != 0 || !strings.Contains(ready.Message, "IPv6") {
				return fmt.Errorf("ServiceImport %v ClusterSetIPs %v, Ready %+v: want none and False naming IPv6", si.Name, si.Spec.IPs, ready)
			}
			return nil
		})
	}

	dig := func(name, typ string) []string {
		host, port, _ := net.SplitHostPort(dnsAddr)
		out, err := exec.Command("dig", "@"+host, "-p", port, "+short", "+time=2", "+tries=1", name, typ).Output()
		if err != nil {
			t.Fatalf("dig %s %s: %v", name, typ, err)
		}
		got := strings.Fields(string(out))
		slices.Sort(got)
		return got
	}
	si, err := mcsClient(t, a).MulticlusterV1beta1().ServiceImports(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, typ, want string }{
		{"web.ds.svc.clusterset.local", "A", si.Spec.IPs[0]},
		{"web.ds.svc.clusterset.local", "AAAA", si.Spec.IPs[1]},
		{"db.ds.svc.clusterset.local", "A", podIPs[corev1.IPv4Protocol]},
		{"db.ds.svc.clusterset.local", "AAAA", podIPs[corev1.IPv6Protocol]},
	} {
		eventually(t, propagation, fmt.Sprintf("a's resolver: %s %s", tc.name, tc.typ), func() error {
			if got := dig(tc.name, tc.typ); !slices.Equal(got, []string{tc.want}) {
				return fmt.Errorf("%v, want %s", got, tc.want)
			}
			return nil
		})
	}
	if err := mcsSlicesOfBothFamilies(ctx, b, ns, "db"); err != nil {
		t.Errorf("b's headless import: %v", err)
	}
}

// runRole runs roles (the DNS role's own runner when rs is nil) until the
// test ends.
func runRole(t *testing.T, name string, rs []role, log *slog.Logger, args ...string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		if rs == nil {
			done <- runDNS(ctx, args, log)
			return
		}
		done <- runRoles(ctx, name, rs, args, log, io.Discard)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s role: %v", name, err)
		}
	})
}

// dualWorkload runs one pod of app name in m behind a PreferDualStack
// Service (headless or not) and exports it.
func dualWorkload(t *testing.T, ctx context.Context, m *cluster.Cluster, ns, name string, headless bool) {
	t.Helper()
	labels := map[string]string{"app": name}
	one := int32(1)
	if _, err := m.Client.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: name, Image: "registry.example/" + name}}}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	policy := corev1.IPFamilyPolicyPreferDualStack
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{Selector: labels, IPFamilyPolicy: &policy, Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}}
	if headless {
		svc.Spec.ClusterIP = corev1.ClusterIPNone
	}
	if _, err := m.Client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := mcsClient(t, m).MulticlusterV1beta1().ServiceExports(ns).Create(ctx,
		&mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// mcsSlicesOfBothFamilies checks m holds MCS EndpointSlices of name from
// cluster a with a ready endpoint of each family.
func mcsSlicesOfBothFamilies(ctx context.Context, m *cluster.Cluster, ns, name string) error {
	list, err := m.Client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{
		LabelSelector: mcsv1beta1.LabelServiceName + "=" + name + "," + mcsv1beta1.LabelSourceCluster + "=a"})
	if err != nil {
		return err
	}
	ready := map[discoveryv1.AddressType]int{}
	for _, s := range list.Items {
		for _, e := range s.Endpoints {
			if e.Conditions.Ready != nil && *e.Conditions.Ready {
				ready[s.AddressType]++
			}
		}
	}
	if ready[discoveryv1.AddressTypeIPv4] != 1 || ready[discoveryv1.AddressTypeIPv6] != 1 {
		return fmt.Errorf("%s's MCS endpoints from a by family: %v, want one of each", name, ready)
	}
	return nil
}

func mcsClient(t *testing.T, m *cluster.Cluster) mcsclient.Interface {
	t.Helper()
	c, err := mcsclient.NewForConfig(m.Config)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func prefixes(ps []netip.Prefix) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.String())
	}
	return out
}

func family(ip string) corev1.IPFamily {
	if netip.MustParseAddr(ip).Is6() {
		return corev1.IPv6Protocol
	}
	return corev1.IPv4Protocol
}
