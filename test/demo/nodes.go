package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/test/cluster"
	"github.com/isthmus-dev/isthmus/test/demo/pod"
	"github.com/isthmus-dev/isthmus/test/install"
)

// The demo on real nodes: test/install's clusterset (the image and
// isthmusctl from the tree, the broker chart, join, the member chart and
// CoreDNS as each member's cluster DNS) with three members, and the
// demo's workloads as pods of the image PodImage.

const (
	// PodImage is the demo's workload image (test/demo/cmd/isthmus-demo-pod).
	PodImage = "isthmus.test/demo-pod:v1"
	// podBinary is the command's path in PodImage.
	podBinary = "/isthmus-demo-pod"
	// tunnelDevice is the chart's WireGuard interface on each gateway node.
	tunnelDevice = "isthmus0"
	// grpcBootstrapDir is where the gRPC client pod finds its bootstrap
	// and the clusterset's roots; grpcTokenDir its projected xDS token.
	grpcBootstrapDir = "/etc/isthmus-demo"
	grpcTokenDir     = "/var/run/secrets/isthmus/xds"
	// The demo's Deployments besides echo.
	clientApp = "client"
	grpcApp   = "grpc-client"
)

// Preflight fails at once, naming everything this host lacks for the
// demo on real nodes and how to get it, before anything slow is built.
func Preflight() error {
	p := append(NodeProblems(repoRoot()), cluster.RealNodeHostProblems("")...)
	if len(p) == 0 {
		return nil
	}
	return fmt.Errorf("this host cannot run the demo on real nodes:\n  - %s", strings.Join(p, "\n  - "))
}

// NodeProblems lists what this host lacks for the demo on real nodes
// beyond what test/cluster checks (root, cgroups, containerd and the other
// node packages, the kubelet), each with how to get it.
func NodeProblems(root string) []string {
	var problems []string
	if _, err := os.Stat(filepath.Join(root, "bin", "helm")); err != nil && os.Getenv("ISTHMUS_HELM") == "" {
		problems = append(problems, "no helm at bin/helm: run `make helm` (or set ISTHMUS_HELM)")
	}
	if _, err := exec.LookPath("go"); err != nil {
		problems = append(problems, "no go on PATH: the demo builds its image and isthmusctl from the tree")
	}
	if _, err := os.Stat(filepath.Join(root, ".git")); err != nil {
		problems = append(problems, "not a git clone: the image's version comes from the VCS stamp (clone the repository, not a worktree)")
	}
	return problems
}

// repoRoot is the repository this package is in.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// UpOnNodes builds the demo on real nodes: the pod image, then
// install.New's clusterset with members a, b (us) and c, the agents'
// lease and withdrawal short through the chart's values, then echo in a
// and b, a TCP client in a and c. It returns once every pod is Ready.
// On error everything made is removed again.
func UpOnNodes(ctx context.Context, opts Options) (_ *World, err error) {
	w := &World{out: opts.Out, began: time.Now()}
	if err := Preflight(); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			w.Down()
		}
	}()
	if w.Dir, err = os.MkdirTemp(opts.WorkDir, "isthmus-demo-"); err != nil {
		return nil, err
	}
	t := time.Now()
	w.say("building the demo's pod image (%s) from the tree", PodImage)
	img, err := buildPodImage(ctx, w.Dir)
	if err != nil {
		return nil, err
	}
	w.say("pod image built (%s); now test/install: the isthmus image and isthmusctl from the tree, a broker and clusters a (eu), b (us), c (eu) on real nodes, the charts", time.Since(t).Round(100*time.Millisecond))
	set, err := install.New(ctx, install.Options{
		Members: 3, ClusterIDs: []string{"a", "b", "c"},
		Localities: []cluster.Locality{{Region: "eu", Zone: "eu-1"}, {Region: "us", Zone: "us-1"}, {Region: "eu", Zone: "eu-2"}},
		Images:     []string{img},
		Values:     []string{"agent.leaseDuration=" + LeaseDuration.String(), "agent.withdrawAfter=" + WithdrawAfter.String()},
		Log:        func(format string, args ...any) { w.say("  "+format, args...) },
		ClusterLog: opts.Log,
	})
	if set != nil {
		w.set, w.Clusters = set, set.Clusterset
	}
	if err != nil {
		return nil, err
	}
	w.ctl = set.Artifacts.Isthmusctl
	for i, spec := range []struct {
		id, region, zone string
		echo             bool
	}{{"a", "eu", "eu-1", true}, {"b", "us", "us-1", true}, {"c", "eu", "eu-2", false}} {
		w.Members = append(w.Members, &Member{ID: spec.id, Region: spec.region, Zone: spec.zone, Echo: spec.echo,
			Cluster: set.Members[i], WGDevice: tunnelDevice, w: w, idx: i + 1})
	}
	t = time.Now()
	if err := w.deployPods(ctx); err != nil {
		return nil, err
	}
	w.say("echo (2 pods) deployed and exported in a and b; a TCP client pod in a and c sends a request to %s:%d every %s (%s)", FQDN, servicePort, loadInterval, time.Since(t).Round(10*time.Millisecond))
	return w, nil
}

// buildPodImage builds isthmus-demo-pod statically and wraps it as
// PodImage with test/image's nodeimages (as the harness builds its own
// images), returning the archive.
func buildPodImage(ctx context.Context, dir string) (string, error) {
	root := repoRoot()
	bin := filepath.Join(dir, "isthmus-demo-pod")
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, "./test/demo/cmd/isthmus-demo-pod")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building isthmus-demo-pod: %w\n%s", err, out)
	}
	images := filepath.Join(dir, "images")
	wrap := exec.CommandContext(ctx, "go", "run", "./nodeimages", "-out", images, "-add", PodImage+"="+bin)
	wrap.Dir = filepath.Join(root, "test", "image")
	if out, err := wrap.CombinedOutput(); err != nil {
		return "", fmt.Errorf("wrapping isthmus-demo-pod as %s: %w\n%s", PodImage, err, out)
	}
	return filepath.Join(images, "isthmus-demo-pod.tar"), nil
}

// deployPods creates the demo namespace everywhere (an import needs it),
// echo with its Service and ServiceExport in a and b, and the TCP client
// in a and c, and waits until they are Ready.
func (w *World) deployPods(ctx context.Context) error {
	for _, m := range w.Members {
		c := m.Cluster.Client
		if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: Namespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("%s: creating namespace %s: %w", m.ID, Namespace, err)
		}
		if m.Echo {
			echo := podContainer("echo", "serve", "--cluster", m.ID, "--listen", fmt.Sprintf(":%d", echoPort))
			echo.Ports = []corev1.ContainerPort{{Name: "tcp", ContainerPort: echoPort}}
			echo.ReadinessProbe = &corev1.Probe{PeriodSeconds: 1,
				ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromString("tcp")}}}
			if err := m.createDeployment(ctx, Service, echoReplicas, corev1.PodSpec{Containers: []corev1.Container{echo}}); err != nil {
				return err
			}
			svc := &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Name: Service, Namespace: Namespace},
				Spec: corev1.ServiceSpec{Selector: map[string]string{"app": Service}, Ports: []corev1.ServicePort{{Name: "tcp", Port: servicePort,
					Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromString("tcp")}}},
			}
			if _, err := c.CoreV1().Services(Namespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				return fmt.Errorf("%s: creating Service: %w", m.ID, err)
			}
			mc, err := mcsclient.NewForConfig(m.Cluster.Config)
			if err != nil {
				return err
			}
			se := &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Name: Service, Namespace: Namespace}}
			if _, err := mc.MulticlusterV1beta1().ServiceExports(Namespace).Create(ctx, se, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				return fmt.Errorf("%s: creating ServiceExport: %w", m.ID, err)
			}
		}
		if m.ID == "a" || m.ID == "c" {
			load := podContainer("client", "load", "--target", fmt.Sprintf("%s:%d", FQDN, servicePort),
				"--interval", loadInterval.String(), "--timeout", requestTimeout.String())
			if err := m.createDeployment(ctx, clientApp, 1, corev1.PodSpec{Containers: []corev1.Container{load}}); err != nil {
				return err
			}
		}
	}
	for _, m := range w.Members {
		for _, app := range []string{Service, clientApp} {
			if app == Service && !m.Echo || app == clientApp && m.ID == "b" {
				continue
			}
			if _, err := m.readyPod(ctx, app, 2*time.Minute); err != nil {
				return err
			}
		}
	}
	return nil
}

// podContainer runs isthmus-demo-pod with args, under the restricted Pod
// Security profile.
func podContainer(name string, args ...string) corev1.Container {
	return corev1.Container{
		Name: name, Image: PodImage, ImagePullPolicy: corev1.PullNever,
		Command: append([]string{podBinary}, args...),
		SecurityContext: &corev1.SecurityContext{
			AllowPrivilegeEscalation: ptr(false),
			ReadOnlyRootFilesystem:   ptr(true),
			RunAsNonRoot:             ptr(true),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
	}
}

func (m *Member) createDeployment(ctx context.Context, app string, replicas int32, spec corev1.PodSpec) error {
	labels := map[string]string{"app": app}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: app, Namespace: Namespace},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: spec},
		},
	}
	if _, err := m.Cluster.Client.AppsV1().Deployments(Namespace).Create(ctx, dep, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("%s: creating Deployment %s: %w", m.ID, app, err)
	}
	return nil
}

// readyPod waits for a Ready pod of app in m's demo namespace.
func (m *Member) readyPod(ctx context.Context, app string, timeout time.Duration) (corev1.Pod, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last string
	for {
		pods, err := m.Cluster.Client.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
		last = fmt.Sprint(err)
		if err == nil {
			last = "no pod"
			for _, p := range pods.Items {
				if p.DeletionTimestamp == nil && podReady(p) {
					return p, nil
				}
				last = fmt.Sprintf("pod %s %s %v", p.Name, p.Status.Phase, p.Status.ContainerStatuses)
			}
		}
		select {
		case <-ctx.Done():
			return corev1.Pod{}, fmt.Errorf("%s: no Ready pod of %s: %s", m.ID, app, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func podReady(p corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// execClient runs isthmus-demo-pod with args in m's client pod, as
// `kubectl exec` would.
func (m *Member) execClient(ctx context.Context, args ...string) (string, error) {
	p, err := m.readyPod(ctx, clientApp, 30*time.Second)
	if err != nil {
		return "", err
	}
	return m.Cluster.Exec(ctx, p, append([]string{podBinary}, args...)...)
}

// followPod reads the outcomes the running pod of app writes to its log
// from now on, until the returned load is stopped. The pod keeps running.
func (m *Member) followPod(ctx context.Context, app string, since time.Time) (*load, error) {
	p, err := m.readyPod(ctx, app, stepTimeoutShort)
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(context.Background())
	st := metav1.NewTime(since.Add(-time.Second))
	rc, err := m.Cluster.Client.CoreV1().Pods(Namespace).GetLogs(p.Name, &corev1.PodLogOptions{Follow: true, SinceTime: &st}).Stream(sctx)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("%s: following the log of %s: %w", m.ID, p.Name, err)
	}
	l := &load{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		defer rc.Close()
		// SinceTime may leave out the pod's hello line: read starts with one.
		hello, _ := json.Marshal(pod.Result{Hello: pod.Hello})
		l.read(io.MultiReader(strings.NewReader(string(hello)+"\n"), rc), "kubectl -n "+Namespace+" logs "+p.Name)
		if sctx.Err() == nil {
			l.fail(fmt.Errorf("%s: the log of pod %s ended", m.ID, p.Name))
		}
	}()
	return l, nil
}

// startGRPCPod runs c's proxyless gRPC client as a pod: gRPC-Go's xDS
// client bootstrapped to the chart's xDS Service over TLS (the roots of
// ConfigMap isthmus-trust-bundle, copied into the demo namespace as a
// user would), authenticated by a projected ServiceAccount token with the
// audience isthmus-xds, as the chart's gateway is.
func (m *Member) startGRPCPod(ctx context.Context) (*load, error) {
	began := time.Now()
	kube := m.Cluster.Client
	trust, err := kube.CoreV1().ConfigMaps(install.Namespace).Get(ctx, brokerv1.TrustBundleConfigMap, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("%s: reading the trust bundle: %w", m.ID, err)
	}
	boot, err := json.MarshalIndent(map[string]any{
		"xds_servers": []any{map[string]any{
			"server_uri":    fmt.Sprintf("isthmus-xds.%s.svc:15010", install.Namespace),
			"channel_creds": []any{map[string]any{"type": "tls", "config": map[string]string{"ca_certificate_file": grpcBootstrapDir + "/" + brokerv1.TrustBundleKey}}},
			"call_creds":    []any{map[string]any{"type": "jwt_token_file", "config": map[string]string{"jwt_token_file": grpcTokenDir + "/token"}}},
		}},
		"node": map[string]any{
			"id":       "isthmus-demo-grpc-client-" + m.ID,
			"locality": map[string]string{"region": m.Region, "zone": m.Zone},
			"metadata": map[string]string{"isthmus.dev/role": "grpc", "isthmus.dev/cluster": m.ID},
		},
	}, "", "  ")
	if err != nil {
		return nil, err
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: grpcApp, Namespace: Namespace},
		Data: map[string]string{"bootstrap.json": string(boot), brokerv1.TrustBundleKey: trust.Data[brokerv1.TrustBundleKey]}}
	if _, err := kube.CoreV1().ConfigMaps(Namespace).Create(ctx, cm, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("%s: creating the gRPC bootstrap: %w", m.ID, err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: clientSA, Namespace: Namespace}}
	if _, err := kube.CoreV1().ServiceAccounts(Namespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("%s: creating ServiceAccount %s: %w", m.ID, clientSA, err)
	}
	c := podContainer("grpc", "grpc", "--target", FQDN, "--interval", loadInterval.String())
	c.Env = []corev1.EnvVar{
		{Name: "GRPC_XDS_BOOTSTRAP", Value: grpcBootstrapDir + "/bootstrap.json"},
		// gRPC-Go reads the bootstrap's call_creds only with this set.
		{Name: "GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS", Value: "true"},
	}
	c.VolumeMounts = []corev1.VolumeMount{{Name: "bootstrap", MountPath: grpcBootstrapDir, ReadOnly: true}, {Name: "xds-token", MountPath: grpcTokenDir, ReadOnly: true}}
	spec := corev1.PodSpec{ServiceAccountName: clientSA, Containers: []corev1.Container{c}, Volumes: []corev1.Volume{
		{Name: "bootstrap", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: grpcApp}}}},
		{Name: "xds-token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{{
			ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: "isthmus-xds", ExpirationSeconds: ptr(int64(3600)), Path: "token"}}}}}},
	}}
	if err := m.createDeployment(ctx, grpcApp, 1, spec); err != nil {
		return nil, err
	}
	return m.followPod(ctx, grpcApp, began)
}

// nodeTxBytes is what m's tunnel device on its node has sent.
func (m *Member) nodeTxBytes(ctx context.Context) int64 {
	ip, err := exec.LookPath("ip")
	if err != nil {
		return 0
	}
	out, err := m.Cluster.NodeCommand(ctx, ip, "-s", "-j", "link", "show", tunnelDevice).Output()
	if err != nil {
		return 0
	}
	var links []struct {
		Stats struct {
			TX struct {
				Bytes int64 `json:"bytes"`
			} `json:"tx"`
		} `json:"stats64"`
	}
	if json.Unmarshal(out, &links) != nil || len(links) == 0 {
		return 0
	}
	return links[0].Stats.TX.Bytes
}

// cutNode takes m's node off the underlay, the only network between the
// clusters: its tunnels go dark and its agent loses the broker, as a
// cluster cut off by a network failure would. Its pods keep running.
func (m *Member) cutNode(ctx context.Context) error {
	ip, err := exec.LookPath("ip")
	if err != nil {
		return err
	}
	if out, err := m.Cluster.NodeCommand(ctx, ip, "link", "set", "eth0", "down").CombinedOutput(); err != nil {
		return fmt.Errorf("%s: taking the node's underlay link down: %w: %s", m.ID, err, out)
	}
	return nil
}

// nodeLeftovers lists what of a stopped real-node demo is still on the
// host: processes of the harness, mounts under its directory, the
// directory itself, the demo's own directory.
func nodeLeftovers(pids []int, harnessDir, demoDir string) []string {
	var left []string
	for _, pid := range pids {
		if cluster.Alive(pid) {
			left = append(left, fmt.Sprintf("process %d", pid))
		}
	}
	if mounts, err := os.ReadFile("/proc/self/mountinfo"); err == nil && harnessDir != "" && strings.Contains(string(mounts), harnessDir) {
		left = append(left, "mounts under "+harnessDir)
	}
	for _, d := range []string{harnessDir, demoDir} {
		if _, err := os.Stat(d); d != "" && !errors.Is(err, os.ErrNotExist) {
			left = append(left, "directory "+d)
		}
	}
	return left
}
