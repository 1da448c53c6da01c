package cluster

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// TestClustersetRunsWorkloads starts a broker and three members, runs a
// Deployment and a Service in each member, and checks that the pods run
// with IPs from that member's pod CIDR and that the real EndpointSlice
// controller lists them. Then it stops the clusterset and checks that no
// process and no file is left.
func TestClustersetRunsWorkloads(t *testing.T) {
	cs := Start(t, Options{Members: 3, Broker: true, Localities: []Locality{{"eu", "eu-1"}, {"eu", "eu-2"}, {"us", "us-1"}}})
	t.Logf("broker + 3 members ready in %v; children RSS %d MiB", cs.StartDuration.Round(time.Millisecond), rssMiB(cs.PIDs()))

	cidrs := map[netip.Prefix]bool{}
	for _, m := range cs.Members {
		if cidrs[m.PodCIDR] || cidrs[m.ServiceCIDR] {
			t.Fatalf("%s: CIDRs %v/%v overlap another member's", m.Name, m.PodCIDR, m.ServiceCIDR)
		}
		cidrs[m.PodCIDR], cidrs[m.ServiceCIDR] = true, true
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	errs := make(chan error, len(cs.Members))
	for _, m := range cs.Members {
		go func() { errs <- runWorkload(ctx, m) }()
	}
	for range cs.Members {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}

	// KWOK keeps each node's Lease, so nodes (and their pods) stay Ready
	// however long a test runs.
	for _, m := range cs.Members {
		if _, err := m.Client.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(ctx, NodeName, metav1.GetOptions{}); err != nil {
			t.Errorf("%s: node Lease: %v", m.Name, err)
		}
	}

	// The broker runs no controllers: it is an API only.
	if len(cs.Broker.controllers) != 0 {
		t.Errorf("broker runs controllers: %d", len(cs.Broker.controllers))
	}

	// An apiserver stopped and started again keeps its data and port, and
	// clients made before the restart work again.
	b := cs.Broker
	if _, err := b.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kept"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	b.StopAPIServer()
	if _, err := b.Client.CoreV1().Namespaces().Get(ctx, "kept", metav1.GetOptions{}); err == nil {
		t.Error("stopped apiserver still answers")
	}
	if err := b.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Client.CoreV1().Namespaces().Get(ctx, "kept", metav1.GetOptions{}); err != nil {
		t.Errorf("after restart: %v", err)
	}
	if err := cs.Members[0].RestartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	if err := checkWorkload(ctx, cs.Members[0], "demo"); err != nil {
		t.Errorf("member1 after restart: %v", err)
	}

	pids := cs.PIDs()
	if want := 2 + 4 + 3*3; len(pids) != want { // 2 etcds, 4 apiservers, 3 x (KCM, scheduler, KWOK)
		t.Errorf("harness runs %d processes, want %d", len(pids), want)
	}
	cs.Stop()
	for _, pid := range pids {
		if Alive(pid) {
			t.Errorf("process %d still runs after Stop", pid)
		}
	}
	if _, err := os.Stat(cs.Dir); !os.IsNotExist(err) {
		t.Errorf("harness directory %s still there after Stop (stat: %v)", cs.Dir, err)
	}
}

// runWorkload makes a Deployment of three pods and a Service in member m and
// waits for Running pods in m's pod CIDR and an EndpointSlice listing them.
func runWorkload(ctx context.Context, m *Cluster) error {
	ns := "demo"
	labels := map[string]string{"app": "web"}
	if _, err := m.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("%s: %w", m.Name, err)
	}
	replicas := int32(3)
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{
					Name: "web", Image: "registry.example/web:1",
					Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
				}}},
			},
		},
	}
	if _, err := m.Client.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("%s: %w", m.Name, err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec: corev1.ServiceSpec{
			Selector: labels,
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}},
		},
	}
	created, err := m.Client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("%s: %w", m.Name, err)
	}
	if ip := netip.MustParseAddr(created.Spec.ClusterIP); !m.ServiceCIDR.Contains(ip) {
		return fmt.Errorf("%s: ClusterIP %s outside the member's service CIDR %s", m.Name, ip, m.ServiceCIDR)
	}

	var last error
	for ctx.Err() == nil {
		if last = checkWorkload(ctx, m, ns); last == nil {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("%s: workload not running: %v", m.Name, last)
}

func checkWorkload(ctx context.Context, m *Cluster, ns string) error {
	pods, err := m.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
	if err != nil {
		return err
	}
	ips := map[string]bool{}
	var seen []string
	for _, p := range pods.Items {
		seen = append(seen, p.Name+"="+p.Status.PodIP)
		if p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" {
			return fmt.Errorf("pod %s is %s with IP %q", p.Name, p.Status.Phase, p.Status.PodIP)
		}
		if ip := netip.MustParseAddr(p.Status.PodIP); !m.PodCIDR.Contains(ip) {
			return fmt.Errorf("pod %s has IP %s outside the member's pod CIDR %s", p.Name, ip, m.PodCIDR)
		}
		ips[p.Status.PodIP] = true
	}
	if len(ips) != 3 {
		return fmt.Errorf("%d running pods with distinct IPs, want 3: %v", len(ips), seen)
	}
	slices, err := m.Client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=web"})
	if err != nil {
		return err
	}
	listed := map[string]bool{}
	for _, s := range slices.Items {
		if s.Labels[discoveryv1.LabelManagedBy] != "endpointslice-controller.k8s.io" {
			return fmt.Errorf("slice %s managed by %q", s.Name, s.Labels[discoveryv1.LabelManagedBy])
		}
		for _, e := range s.Endpoints {
			if e.Conditions.Ready != nil && *e.Conditions.Ready {
				listed[e.Addresses[0]] = true
			}
		}
	}
	for ip := range ips {
		if !listed[ip] {
			return fmt.Errorf("pod IP %s not listed ready in the Service's EndpointSlices (%v)", ip, listed)
		}
	}
	return nil
}

// TestStartFailureNamesTheBinary checks that a binary that does not come up
// is named in the error together with its last log lines, and that nothing
// is left behind.
func TestStartFailureNamesTheBinary(t *testing.T) {
	bin := t.TempDir()
	for _, name := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "etcd", "kwok"} {
		script := "#!/bin/sh\nsleep 60\n"
		if name == "kube-apiserver" {
			script = "#!/bin/sh\necho \"E0101 cannot open etcd: simulated failure\" >&2\nexit 3\n"
		}
		if err := os.WriteFile(filepath.Join(bin, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(bin, "kwok-stages.yaml"), []byte("{}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	_, err := New(context.Background(), Options{Broker: true, BinDir: bin, WorkDir: work, StartTimeout: 30 * time.Second})
	if err == nil {
		t.Fatal("New succeeded with a failing kube-apiserver")
	}
	for _, want := range []string{"broker/kube-apiserver did not come up", "process exited", "cannot open etcd: simulated failure"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(work, dirPrefix+"*")); len(left) != 0 {
		t.Errorf("failed start left %v behind", left)
	}
}

// TestSweepStale checks that the children of a harness whose test binary
// died are ended and its directory removed, while a live harness's are not.
func TestSweepStale(t *testing.T) {
	work := t.TempDir()
	sleep := exec.Command("sleep", "60")
	sleep.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	defer sleep.Process.Kill()
	exited := make(chan struct{})
	go func() { sleep.Wait(); close(exited) }()
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", sleep.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}

	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	mk := func(name string, owner int) string {
		dir := filepath.Join(work, dirPrefix+name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(owner)), 0o600)
		os.WriteFile(filepath.Join(dir, childrenFile), []byte(fmt.Sprintf("%d %s\n", sleep.Process.Pid, exe)), 0o600)
		return dir
	}
	live := mk("live", os.Getpid())
	sweepStale(work)
	if _, err := os.Stat(live); err != nil {
		t.Fatalf("live harness swept: %v", err)
	}
	if !Alive(sleep.Process.Pid) {
		t.Fatal("live harness's child was ended")
	}

	stale := mk("stale", dead.Process.Pid)
	sweepStale(work)
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale harness directory not removed: %v", err)
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Error("stale harness's child still runs")
	}
}

// rssMiB sums the resident memory of processes, for the test log.
func rssMiB(pids []int) int {
	total := 0
	for _, pid := range pids {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")))
				total += kb
			}
		}
	}
	return total / 1024
}
