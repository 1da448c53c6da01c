package cluster

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// TestDualStack starts a dual-stack member and checks what dual-stack
// tests build on: its node has a pod CIDR of each family inside the
// member's ranges, a PreferDualStack Service gets a ClusterIP of each
// family, KWOK gives a pod an address of each, and the EndpointSlice
// controller writes a slice per family.
func TestDualStack(t *testing.T) {
	cs := Start(t, Options{Members: 1, DualStack: []bool{true}})
	m := cs.Members[0]
	if len(m.PodCIDRs) != 2 || len(m.ServiceCIDRs) != 2 || !m.PodCIDRs[1].Addr().Is6() || m.PodCIDRs[0] != m.PodCIDR {
		t.Fatalf("ranges %v %v, want IPv4 then IPv6", m.PodCIDRs, m.ServiceCIDRs)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	node, err := m.Client.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := within(node.Spec.PodCIDRs, m.PodCIDRs, true); err != nil {
		t.Errorf("node pod CIDRs: %v", err)
	}

	labels := map[string]string{"app": "dual"}
	one := int32(1)
	if _, err := m.Client.AppsV1().Deployments("default").Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "dual"},
		Spec: appsv1.DeploymentSpec{Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "dual", Image: "registry.example/dual:1"}}}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	policy := corev1.IPFamilyPolicyPreferDualStack
	svc, err := m.Client.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "dual"},
		Spec:       corev1.ServiceSpec{Selector: labels, IPFamilyPolicy: &policy, Ports: []corev1.ServicePort{{Port: 80}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := within(svc.Spec.ClusterIPs, m.ServiceCIDRs, false); err != nil {
		t.Errorf("ClusterIPs: %v", err)
	}

	var last error
	for ctx.Err() == nil {
		if last = dualWorkload(ctx, m); last == nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("dual-stack workload: %v", last)
}

func dualWorkload(ctx context.Context, m *Cluster) error {
	pods, err := m.Client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=dual"})
	if err != nil {
		return err
	}
	if len(pods.Items) != 1 || pods.Items[0].Status.Phase != corev1.PodRunning {
		return fmt.Errorf("%d pods, want one running", len(pods.Items))
	}
	var ips []string
	for _, ip := range pods.Items[0].Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	if err := within(ips, m.PodCIDRs, false); err != nil {
		return fmt.Errorf("pod IPs: %w", err)
	}
	slices, err := m.Client.DiscoveryV1().EndpointSlices("default").List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=dual"})
	if err != nil {
		return err
	}
	families := map[discoveryv1.AddressType]int{}
	for _, s := range slices.Items {
		families[s.AddressType] += len(s.Endpoints)
	}
	if families[discoveryv1.AddressTypeIPv4] != 1 || families[discoveryv1.AddressTypeIPv6] != 1 {
		return fmt.Errorf("EndpointSlice endpoints by family %v, want one of each", families)
	}
	return nil
}

// within checks that addrs (addresses, or prefixes when prefixes) are one
// of each family, in ranges' order, each inside its range.
func within(addrs []string, ranges []netip.Prefix, prefixes bool) error {
	if len(addrs) != len(ranges) {
		return fmt.Errorf("%v, want one in each of %v", addrs, ranges)
	}
	for i, a := range addrs {
		var ip netip.Addr
		if prefixes {
			p, err := netip.ParsePrefix(a)
			if err != nil {
				return err
			}
			ip = p.Addr()
		} else {
			var err error
			if ip, err = netip.ParseAddr(a); err != nil {
				return err
			}
		}
		if !ranges[i].Contains(ip) {
			return fmt.Errorf("%s is outside %s (all: %v)", a, ranges[i], addrs)
		}
	}
	return nil
}

// TestDualStackRealNode starts a dual-stack member on a real node and
// checks what the dual-stack conformance run builds on: the node reports
// an InternalIP of each family, a pod gets an address from each of the
// node's pod CIDRs, kube-proxy programs an nftables table per family, and
// the pod reaches an IPv6-only ClusterIP of itself through it.
func TestDualStackRealNode(t *testing.T) {
	cs := Start(t, Options{Members: 1, RealNodes: true, DualStack: []bool{true}})
	m := cs.Members[0]
	t.Logf("a dual-stack member with a real node ready in %v (kubelet start -> node Ready %v)",
		cs.StartDuration.Round(time.Millisecond), m.node.readyAfter.Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	node, err := m.Client.CoreV1().Nodes().Get(ctx, m.Node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var internal []string
	for _, a := range node.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			internal = append(internal, a.Address)
		}
	}
	if len(m.NodeIPs) != 2 || fmt.Sprint(internal) != fmt.Sprint(m.NodeIPs) {
		t.Errorf("node InternalIPs %v, want %v (IPv4 then IPv6)", internal, m.NodeIPs)
	}
	if err := within(node.Spec.PodCIDRs, m.PodCIDRs, true); err != nil {
		t.Errorf("node pod CIDRs: %v", err)
	}

	pod, err := runTestServer(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	var ips []string
	for _, ip := range pod.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	if err := within(ips, m.PodCIDRs, false); err != nil {
		t.Errorf("pod IPs: %v", err)
	}

	six := corev1.IPFamilyPolicySingleStack
	svc, err := m.Client.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web6"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"}, IPFamilyPolicy: &six,
			IPFamilies: []corev1.IPFamily{corev1.IPv6Protocol},
			Ports:      []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ip := netip.MustParseAddr(svc.Spec.ClusterIP); !m.ServiceCIDRs[1].Contains(ip) {
		t.Fatalf("IPv6 ClusterIP %s outside %s", ip, m.ServiceCIDRs[1])
	}
	url := "http://" + netip.AddrPortFrom(netip.MustParseAddr(svc.Spec.ClusterIP), 80).String() + "/"
	var last string
	if err := poll(ctx, func() bool {
		last, err = m.Exec(ctx, pod, "/testserver", "get", url)
		return err == nil && strings.Contains(last, "200 hello from "+pod.Name)
	}); err != nil {
		t.Errorf("IPv6 ClusterIP %s through kube-proxy: %q, %v", svc.Spec.ClusterIP, last, err)
	}
	out, err := m.NodeCommand(ctx, "nft", "list", "tables").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "table ip kube-proxy") || !strings.Contains(string(out), "table ip6 kube-proxy") {
		t.Errorf("kube-proxy's nftables tables on the node, want ip and ip6:\n%s %v", out, err)
	}
}
