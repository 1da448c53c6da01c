package cluster

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// TestRealNodes starts two members with real nodes and checks what users
// of a cluster rely on: the node Ready, a Deployment of a locally built
// image Running under the restricted Pod Security profile, exec and logs
// through client-go, a pod calling the apiserver with its ServiceAccount
// token, a ClusterIP answered through kube-proxy, no route from one
// member's pods to the other's, and a Stop that leaves no process, cgroup,
// mount, namespace or interface behind.
func TestRealNodes(t *testing.T) {
	cs := Start(t, Options{Members: 2, RealNodes: true, Localities: []Locality{{"eu", "eu-1"}, {"us", "us-1"}}})
	t.Logf("2 members with real nodes ready in %v; children RSS %d MiB", cs.StartDuration.Round(time.Millisecond), rssMiB(cs.PIDs()))
	for _, m := range cs.Members {
		t.Logf("%s: kubelet start -> node Ready in %v", m.Name, m.node.readyAfter.Round(time.Millisecond))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	m1, m2 := cs.Members[0], cs.Members[1]
	node, err := m1.Client.CoreV1().Nodes().Get(ctx, m1.Node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := node.Labels[corev1.LabelTopologyRegion]; got != "eu" {
		t.Errorf("node region label %q, want eu", got)
	}
	if ip := node.Status.Addresses[0].Address; ip != m1.NodeIP.String() {
		t.Errorf("node address %s, want %s", ip, m1.NodeIP)
	}

	pods := map[*Cluster]corev1.Pod{}
	for _, m := range cs.Members {
		began := time.Now()
		pod, err := runTestServer(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: Deployment created -> pod Ready in %v", m.Name, time.Since(began).Round(time.Millisecond))
		if ip := netip.MustParseAddr(pod.Status.PodIP); !m.PodCIDR.Contains(ip) {
			t.Errorf("%s: pod IP %s outside %s", m.Name, ip, m.PodCIDR)
		}
		pods[m] = pod
	}
	pod := pods[m1]

	out, err := m1.Exec(ctx, pod, "/testserver", "whoami")
	if err != nil {
		t.Fatalf("exec whoami: %v", err)
	}
	if !strings.Contains(out, "uid=65532 pod_ip="+pod.Status.PodIP) || strings.Contains(out, "token_bytes=0") {
		t.Errorf("whoami: %q", out)
	}

	// The pod reaches the apiserver through the kubernetes Service and is
	// known by its token: allowed what every ServiceAccount may, denied
	// the rest.
	out, err = m1.Exec(ctx, pod, "/testserver", "apicheck")
	if err != nil {
		t.Fatalf("exec apicheck: %v", err)
	}
	if !strings.Contains(out, "GET /version 200") || !strings.Contains(out, "GET /api/v1/namespaces/kube-system/secrets 403") {
		t.Errorf("apicheck: %q", out)
	}

	svc, err := m1.Client.CoreV1().Services("default").Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// kube-proxy programs the Service a moment after its endpoint is ready.
	var last string
	if err := poll(ctx, func() bool {
		last, err = m1.Exec(ctx, pod, "/testserver", "get", "http://"+svc.Spec.ClusterIP+"/")
		return err == nil && strings.Contains(last, "200 hello from "+pod.Name)
	}); err != nil {
		t.Errorf("ClusterIP %s through kube-proxy: %q, %v", svc.Spec.ClusterIP, last, err)
	}
	// The node itself reaches it too (its route for the service range).
	if out, err := m1.NodeCommand(ctx, "nft", "list", "tables").CombinedOutput(); err != nil || !strings.Contains(string(out), "kube-proxy") {
		t.Errorf("kube-proxy's nftables table on the node: %s %v", out, err)
	}

	logs, err := m1.Client.CoreV1().Pods("default").GetLogs(pod.Name, &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil {
		t.Fatalf("logs: %v", err)
	}
	if !strings.Contains(string(logs), "GET / from") {
		t.Errorf("logs lack the request: %q", logs)
	}

	// No route between members' pods: only a tunnel may join them.
	other := pods[m2].Status.PodIP
	if out, err := m1.Exec(ctx, pod, "/testserver", "get", "http://"+other+":8080/"); err == nil {
		t.Errorf("member1's pod reached member2's pod %s: %q", other, out)
	}

	// Teardown leaves nothing behind.
	pids := cs.PIDs()
	var cgroups []string
	var namespaces []string
	for _, m := range cs.Members {
		cgroups = append(cgroups, m.node.cgroup)
		namespaces = append(namespaces, nsIDs(t, m.node.holderPID())...)
		pids = append(pids, cgroupPIDs(m.node.cgroup)...)
	}
	cs.Stop()
	for _, pid := range pids {
		if Alive(pid) {
			t.Errorf("process %d still runs after Stop", pid)
		}
	}
	hs, _ := cgroupHierarchies()
	for _, cg := range cgroups {
		for _, h := range hs {
			if _, err := os.Stat(filepath.Join(h, cg)); !os.IsNotExist(err) {
				t.Errorf("cgroup %s%s left after Stop", h, cg)
			}
		}
	}
	if left := processesIn(namespaces); len(left) > 0 {
		t.Errorf("processes still in the nodes' namespaces: %v", left)
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mounts), cs.Dir) {
		t.Errorf("mounts under %s left on the host", cs.Dir)
	}
	// The nodes' interfaces lived only in their namespaces (gone above);
	// none was ever made on the host.
	for _, link := range hostLinks(t) {
		if link == underlayBridge || link == "cni0" || strings.HasPrefix(link, "u-member") {
			t.Errorf("interface %s on the host", link)
		}
	}
	if _, err := os.Stat(cs.Dir); !os.IsNotExist(err) {
		t.Errorf("harness directory %s still there after Stop (stat: %v)", cs.Dir, err)
	}
}

// runTestServer runs TestServerImage as a one-replica Deployment behind
// the Service web, with the restricted profile's security context in a
// namespace that enforces it, and returns the Ready pod.
func runTestServer(ctx context.Context, m *Cluster) (corev1.Pod, error) {
	ns, err := m.Client.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{})
	if err != nil {
		return corev1.Pod{}, err
	}
	ns.Labels["pod-security.kubernetes.io/enforce"] = "restricted"
	if _, err := m.Client.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		return corev1.Pod{}, err
	}
	labels := map[string]string{"app": "web"}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](1),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					SecurityContext: &corev1.PodSecurityContext{
						RunAsNonRoot:   ptr.To(true),
						SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
					},
					Containers: []corev1.Container{{
						Name: "web", Image: TestServerImage, ImagePullPolicy: corev1.PullNever,
						Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
						Env: []corev1.EnvVar{{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{
							FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}}},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}},
							PeriodSeconds: 1,
						},
						SecurityContext: &corev1.SecurityContext{
							AllowPrivilegeEscalation: ptr.To(false),
							ReadOnlyRootFilesystem:   ptr.To(true),
							Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
						},
					}},
				},
			},
		},
	}
	if _, err := m.Client.AppsV1().Deployments("default").Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		return corev1.Pod{}, fmt.Errorf("%s: %w", m.Name, err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{Selector: labels,
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}}},
	}
	if _, err := m.Client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return corev1.Pod{}, fmt.Errorf("%s: %w", m.Name, err)
	}
	var ready corev1.Pod
	var last string
	err = poll(ctx, func() bool {
		list, err := m.Client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil || len(list.Items) == 0 {
			last = fmt.Sprint("no pod yet ", err)
			return false
		}
		p := list.Items[0]
		last = fmt.Sprintf("pod %s %s %v", p.Name, p.Status.Phase, p.Status.ContainerStatuses)
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				ready = p
				return true
			}
		}
		return false
	})
	if err != nil {
		return corev1.Pod{}, fmt.Errorf("%s: pod not Ready: %v (%s)", m.Name, err, last)
	}
	return ready, nil
}

// nsIDs returns the identities ("net:[4026...]") of a process's network
// and mount namespaces.
func nsIDs(t *testing.T, pid int) []string {
	var ids []string
	for _, ns := range []string{"net", "mnt"} {
		id, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, ns))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

// processesIn lists the processes in any of the namespaces.
func processesIn(namespaces []string) []string {
	var found []string
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		for _, ns := range []string{"net", "mnt"} {
			id, err := os.Readlink(filepath.Join(p, "ns", ns))
			if err != nil {
				continue
			}
			for _, want := range namespaces {
				if id == want {
					found = append(found, filepath.Base(p)+" in "+id)
				}
			}
		}
	}
	return found
}

// hostLinks names the host's network interfaces.
func hostLinks(t *testing.T) []string {
	out, err := exec.Command("ip", "-o", "link", "show").Output()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(line); len(f) > 1 {
			names = append(names, strings.TrimSuffix(f[1], ":"))
		}
	}
	return names
}

// TestRealNodesNeedAHost checks that a host lacking what real nodes need
// fails before anything starts, naming each missing part and how to get it, and leaves
// nothing behind.
func TestRealNodesNeedAHost(t *testing.T) {
	bin := t.TempDir()
	for _, name := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "etcd", "kwok", "kwok-stages.yaml"} {
		if err := os.WriteFile(filepath.Join(bin, name), []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", t.TempDir()) // no containerd, runc, socat, nsenter, ip, nft
	work := t.TempDir()
	_, err := New(context.Background(), Options{Members: 1, RealNodes: true, BinDir: bin, WorkDir: work})
	if err == nil {
		t.Fatal("New succeeded without containerd or a kubelet")
	}
	for _, want := range []string{
		"this host cannot run real nodes",
		"containerd (Debian package containerd)",
		"containerd-shim-runc-v2 (Debian package containerd)",
		"runc (Debian package runc)",
		"nsenter (Debian package util-linux)",
		"apt-get install --no-install-recommends containerd runc containernetworking-plugins socat",
		"no kubelet at " + filepath.Join(bin, "kubelet") + ": run `make tools`",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(work, "*")); len(left) != 0 {
		t.Errorf("failed start left %v behind", left)
	}
}
