// Package install runs Isthmus the way a user installs it, on test/cluster's
// real nodes: the image `make image` builds, imported into every node; the
// broker chart into the hub; `isthmusctl join` for each member; the member
// chart with the chart's defaults; and CoreDNS as each member's cluster
// DNS, serving clusterset.local in one of the two documented modes (built
// with the isthmus plugin, or stock and forwarding to `isthmus dns`). The
// tests of what users meet — the README's steps, isthmusctl verify, the
// MCS conformance suite — start from here.
package install

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-dev/isthmus/test/cluster"
)

// Namespace is where the member chart goes (it refuses any other).
const Namespace = "isthmus-system"

// DNSMode is how a member's CoreDNS serves clusterset.local.
type DNSMode int

const (
	// PluginDNS: CoreDNS built with the isthmus plugin answers the zone
	// itself.
	PluginDNS DNSMode = iota
	// ForwardDNS: stock CoreDNS forwards the zone to `isthmus dns`, with
	// the server block the chart prints (ConfigMap isthmus-coredns-stub).
	ForwardDNS
)

func (m DNSMode) String() string {
	if m == ForwardDNS {
		return "stock CoreDNS forwarding to isthmus dns"
	}
	return "CoreDNS with the isthmus plugin"
}

// Options say what to install.
type Options struct {
	// Members is the number of member clusters (default 2).
	Members int
	// DNS is member i+1's DNS mode; members beyond it alternate, member1
	// the plugin, member2 forwarding, so a two-member set tests both.
	DNS []DNSMode
	// DualStack is passed to the harness: member i+1 gets IPv6 ranges too.
	DualStack []bool
	// Values are extra `--set` values for every member's chart.
	Values []string
	// Images are more image archives every node imports (the chart's
	// image is always there).
	Images []string
	// Localities are the members' regions and zones, member1's first;
	// members beyond it get region-<i> and zone-<i>.
	Localities []cluster.Locality
	// ClusterIDs are the members' cluster ids, member1's first; members
	// beyond it are called by their harness names (member1, ...).
	ClusterIDs []string
	// Log receives each step's progress; nil means t.Logf in Start and
	// nothing in New.
	Log func(format string, args ...any)
	// ClusterLog receives the harness's own log (test/cluster); nil means
	// the test's log in Start and nothing in New.
	ClusterLog *slog.Logger
}

// Set is an installed clusterset.
type Set struct {
	*cluster.Clusterset
	// Artifacts are the binaries and image it was installed from.
	Artifacts *Artifacts
	// DNS is each member's DNS mode, member1 first.
	DNS []DNSMode
	// Timings are how long each step took, in order.
	Timings []Timing

	clusterIDs []string
}

// Timing is one install step's duration.
type Timing struct {
	Step string
	Took time.Duration
}

// Artifacts are what a user installs from, built from the tree once per
// test binary.
type Artifacts struct {
	Root       string // the repository
	Helm       string
	Isthmusctl string
	// Image is the OCI archive of `make image` for this machine's
	// platform; the chart's default image (repository:appVersion) is in it.
	Image string
	// Version is the VCS version stamped into isthmus.
	Version string
}

var (
	buildOnce sync.Once
	built     *Artifacts
	buildErr  error
)

// Build builds isthmusctl and the image from the tree, once per process:
// the image with test/image/build.sh (what `make image` runs) for this
// machine's platform alone. It needs a git checkout, for the VCS stamp,
// and helm (make helm).
func Build() (*Artifacts, error) {
	buildOnce.Do(func() { built, buildErr = build() })
	return built, buildErr
}

func build() (*Artifacts, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return nil, fmt.Errorf("locating the repository: no caller information")
	}
	root := filepath.Join(filepath.Dir(file), "..", "..")
	helm := filepath.Join(root, "bin", "helm")
	if h := os.Getenv("ISTHMUS_HELM"); h != "" {
		helm = h
	}
	if _, err := os.Stat(helm); err != nil {
		return nil, fmt.Errorf("no helm at %s: run make helm (or set ISTHMUS_HELM)", helm)
	}
	a, err := cached(root, func(dir string) (*Artifacts, error) {
		a := &Artifacts{Isthmusctl: filepath.Join(dir, "isthmusctl"), Image: filepath.Join(dir, "isthmus-image.tar")}
		ctl := exec.Command("go", "build", "-buildvcs=true", "-o", a.Isthmusctl, "./cmd/isthmusctl")
		ctl.Dir = root
		if out, err := ctl.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("building isthmusctl: %w: %s", err, out)
		}
		img := exec.Command("bash", "test/image/build.sh", a.Image)
		img.Dir = root
		img.Env = append(os.Environ(), "ISTHMUS_IMAGE_PLATFORMS=linux/"+runtime.GOARCH)
		out, err := img.CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("building the image (test/image/build.sh): %w: %s", err, out)
		}
		// The image's own version, which names its tag: the tree may have
		// changed since isthmusctl was built.
		if a.Version, err = imageVersion(out); err != nil {
			return nil, err
		}
		return a, nil
	})
	if err != nil {
		return nil, err
	}
	// Where this process's repository and helm are, not the builder's.
	a.Root, a.Helm = root, helm
	return a, nil
}

// Start is New for a test: it fails the test on error and stops the
// clusterset when the test ends. Progress goes to the test's log.
func Start(t testing.TB, opts Options) *Set {
	t.Helper()
	if opts.Log == nil {
		opts.Log = t.Logf
	}
	if opts.ClusterLog == nil {
		opts.ClusterLog = slog.New(slog.NewTextHandler(testWriter{t}, nil))
	}
	s, err := New(context.Background(), opts)
	if s != nil && s.Clusterset != nil {
		t.Cleanup(s.Stop)
	}
	if err != nil {
		t.Fatal(err)
	}
	return s
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// New builds the artifacts, starts a broker and members on real nodes and
// installs Isthmus into them as the README says. On error the returned
// Set, if not nil, holds what was started: Stop it.
func New(ctx context.Context, opts Options) (*Set, error) {
	if opts.Members == 0 {
		opts.Members = 2
	}
	logf := opts.Log
	if logf == nil {
		logf = func(string, ...any) {}
	}
	// Before join: the ids name the clusters to the broker and the chart.
	s := &Set{clusterIDs: opts.ClusterIDs}
	step := func(name string, fn func() error) error {
		began := time.Now()
		if err := fn(); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		s.Timings = append(s.Timings, Timing{name, time.Since(began)})
		logf("%s: %v", name, time.Since(began).Round(time.Millisecond))
		return nil
	}
	if err := step("build isthmusctl and the image", func() (err error) { s.Artifacts, err = Build(); return err }); err != nil {
		return nil, err
	}
	a := s.Artifacts
	localities := slices.Clone(opts.Localities)
	for i := len(localities); i < opts.Members; i++ {
		localities = append(localities, cluster.Locality{Region: fmt.Sprintf("region-%d", i+1), Zone: fmt.Sprintf("zone-%d", i+1)})
	}
	if err := step("start the broker and members on real nodes", func() (err error) {
		s.Clusterset, err = cluster.New(ctx, cluster.Options{
			Broker: true, Members: opts.Members, RealNodes: true, CoreDNS: true, Log: opts.ClusterLog,
			Images: append([]string{a.Image}, opts.Images...), Localities: localities, DualStack: opts.DualStack,
		})
		return err
	}); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 6*time.Minute)
	defer cancel()
	if err := step("helm install the broker chart into the hub", func() error {
		// The harness's hub is an apiserver alone, with no node and no
		// controllers: it runs no pods, so the chart's record counter
		// (hubQuota) is left out, and the record-count limits are not
		// enforced here (mcs/setup's tests run the counter).
		return s.run(ctx, a.Helm, "--kubeconfig", s.Kubeconfig, "--kube-context", "broker",
			"install", "isthmus-broker", filepath.Join(a.Root, "charts", "isthmus-broker"), "--wait", "--set", "hubQuota.enabled=false")
	}); err != nil {
		return s, err
	}
	for i, m := range s.Members {
		mode := PluginDNS
		switch {
		case i < len(opts.DNS):
			mode = opts.DNS[i]
		case i%2 == 1:
			mode = ForwardDNS
		}
		s.DNS = append(s.DNS, mode)
		id := s.ClusterID(m)
		if err := step(m.Name+": isthmusctl join", func() error {
			return s.run(ctx, a.Isthmusctl, "join", "--kubeconfig", s.Kubeconfig, "--context", m.Name,
				"--broker-context", "broker", "--broker-server", s.BrokerServer, "--cluster-id", id,
				"--pod-cidrs", list(m.PodCIDRs), "--service-cidrs", list(m.ServiceCIDRs))
		}); err != nil {
			return s, err
		}
		if err := step(m.Name+": label the gateway node and helm install the member chart", func() error {
			node, err := m.Client.CoreV1().Nodes().Get(ctx, m.Node, metav1.GetOptions{})
			if err != nil {
				return err
			}
			node.Labels["isthmus.dev/gateway"] = "true"
			if _, err := m.Client.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{}); err != nil {
				return err
			}
			args := []string{"--kubeconfig", s.Kubeconfig, "--kube-context", m.Name,
				"install", "isthmus", filepath.Join(a.Root, "charts", "isthmus"), "-n", Namespace,
				"--set", "clusterID=" + id, "--set", "region=" + m.Locality.Region, "--set", "zone=" + m.Locality.Zone,
				"--set", "podCIDRs={" + list(m.PodCIDRs) + "}", "--set", "serviceCIDRs={" + list(m.ServiceCIDRs) + "}",
				"--set", "dns.clusterIP=" + DNSServiceIP(m).String()}
			for _, v := range opts.Values {
				args = append(args, "--set", v)
			}
			return s.run(ctx, a.Helm, args...)
		}); err != nil {
			return s, err
		}
	}
	for _, m := range s.Members {
		if err := step(m.Name+": every chart pod Ready", func() error { return WaitReady(ctx, m) }); err != nil {
			return s, err
		}
	}
	for i, m := range s.Members {
		if err := step(fmt.Sprintf("%s: CoreDNS as the cluster DNS (%s)", m.Name, s.DNS[i]), func() error {
			corefile, err := Corefile(ctx, m, s.DNS[i])
			if err != nil {
				return err
			}
			return m.InstallCoreDNS(ctx, corefile)
		}); err != nil {
			return s, err
		}
	}
	return s, nil
}

// ClusterID is the member's cluster id: Options.ClusterIDs's, else its
// harness name (member1, ...).
func (s *Set) ClusterID(m *cluster.Cluster) string {
	for i, c := range s.Members {
		if c == m && i < len(s.clusterIDs) {
			return s.clusterIDs[i]
		}
	}
	return m.Name
}

// DNSServiceIP is the address the tests give the chart's isthmus-dns
// Service: the 53rd of the member's Service range, as the chart's README
// suggests.
func DNSServiceIP(m *cluster.Cluster) netip.Addr {
	a := m.ServiceCIDR.Addr()
	for range 53 {
		a = a.Next()
	}
	return a
}

// Corefile is the member's Corefile in the mode: the cluster's own block,
// then clusterset.local answered by the isthmus plugin, or the server
// block the chart rendered into isthmus-coredns-stub, pasted as its
// NOTES.txt says.
func Corefile(ctx context.Context, m *cluster.Cluster, mode DNSMode) (string, error) {
	if mode == PluginDNS {
		return cluster.ClusterDomainCorefile + "clusterset.local:53 {\n    errors\n    isthmus\n    cache 5\n}\n", nil
	}
	cm, err := m.Client.CoreV1().ConfigMaps(Namespace).Get(ctx, "isthmus-coredns-stub", metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("reading the chart's stub domain: %w", err)
	}
	stub := cm.Data["Corefile"]
	if !strings.Contains(stub, DNSServiceIP(m).String()) {
		return "", fmt.Errorf("the chart's stub domain does not forward to %s:\n%s", DNSServiceIP(m), stub)
	}
	return cluster.ClusterDomainCorefile + stub, nil
}

// WaitReady waits until every Deployment and DaemonSet of the chart has
// all its pods Ready; on timeout it says which pods are not, and why.
func WaitReady(ctx context.Context, m *cluster.Cluster) error {
	var last string
	for {
		last = notReady(ctx, m)
		if last == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: chart pods not Ready: %s", m.Name, last)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func notReady(ctx context.Context, m *cluster.Cluster) string {
	deps, err := m.Client.AppsV1().Deployments(Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err.Error()
	}
	dss, err := m.Client.AppsV1().DaemonSets(Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err.Error()
	}
	if len(deps.Items) == 0 {
		return "no Deployments yet"
	}
	var waiting []string
	for _, d := range deps.Items {
		want := int32(1)
		if d.Spec.Replicas != nil {
			want = *d.Spec.Replicas
		}
		if d.Status.ObservedGeneration < d.Generation || d.Status.UpdatedReplicas != want || d.Status.ReadyReplicas != want || d.Status.Replicas != want {
			waiting = append(waiting, fmt.Sprintf("deployment %s %d/%d ready", d.Name, d.Status.ReadyReplicas, want))
		}
	}
	for _, d := range dss.Items {
		st := d.Status
		if st.ObservedGeneration < d.Generation || st.DesiredNumberScheduled == 0 || st.NumberReady != st.DesiredNumberScheduled || st.UpdatedNumberScheduled != st.DesiredNumberScheduled {
			waiting = append(waiting, fmt.Sprintf("daemonset %s %d/%d ready", d.Name, st.NumberReady, st.DesiredNumberScheduled))
		}
	}
	if len(waiting) == 0 {
		return ""
	}
	pods, err := m.Client.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{})
	if err == nil {
		for _, p := range pods.Items {
			if why := podTrouble(p); why != "" {
				waiting = append(waiting, "pod "+p.Name+": "+why)
			}
		}
	}
	return strings.Join(waiting, "; ")
}

// podTrouble says why a pod is not Ready, in the words kubectl describe
// would use, or "" when it is.
func podTrouble(p corev1.Pod) string {
	var why []string
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			return ""
		}
		if c.Status != corev1.ConditionTrue && c.Message != "" {
			why = append(why, c.Message)
		}
	}
	for _, cs := range p.Status.ContainerStatuses {
		switch {
		case cs.State.Waiting != nil:
			why = append(why, fmt.Sprintf("%s waiting: %s %s", cs.Name, cs.State.Waiting.Reason, cs.State.Waiting.Message))
		case cs.State.Terminated != nil:
			why = append(why, fmt.Sprintf("%s terminated: %s %s", cs.Name, cs.State.Terminated.Reason, cs.State.Terminated.Message))
		}
		if t := cs.LastTerminationState.Terminated; t != nil {
			why = append(why, fmt.Sprintf("%s last exit %d: %s", cs.Name, t.ExitCode, strings.TrimSpace(t.Message)))
		}
	}
	return fmt.Sprintf("%s %s", p.Status.Phase, strings.Join(why, ", "))
}

// run runs a command of the install, its output in the error.
func (s *Set) run(ctx context.Context, bin string, args ...string) error {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "HOME="+s.Dir, "HELM_CACHE_HOME="+filepath.Join(s.Dir, "helm-cache"),
		"HELM_CONFIG_HOME="+filepath.Join(s.Dir, "helm-config"), "HELM_DATA_HOME="+filepath.Join(s.Dir, "helm-data"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w\n%s", filepath.Base(bin), strings.Join(args, " "), err, out)
	}
	return nil
}

func list(ps []netip.Prefix) string {
	var s []string
	for _, p := range ps {
		s = append(s, p.String())
	}
	return strings.Join(s, ",")
}

// BuildUpgrade builds the image of the next version: the tree at HEAD
// with one more (empty) commit, in a clone, so Go stamps another version.
// It returns the image archive and its version tag (the version with
// '+' as '-', as test/image/build.sh tags it).
func (a *Artifacts) BuildUpgrade() (image, tag string, err error) {
	dir, err := os.MkdirTemp("", "isthmus-upgrade-")
	if err != nil {
		return "", "", err
	}
	src := filepath.Join(dir, "src")
	image = filepath.Join(dir, "isthmus-image.tar")
	var out []byte
	for _, c := range [][]string{
		{"git", "clone", "-q", a.Root, src},
		{"git", "-C", src, "-c", "user.name=upgrade test", "-c", "user.email=test@isthmus.invalid", "commit", "-q", "--allow-empty", "-m", "the next version"},
		{"bash", filepath.Join(src, "test", "image", "build.sh"), image},
	} {
		cmd := exec.Command(c[0], c[1:]...)
		cmd.Dir = src
		if c[0] == "git" {
			cmd.Dir = dir
		}
		cmd.Env = append(os.Environ(), "ISTHMUS_IMAGE_PLATFORMS=linux/"+runtime.GOARCH)
		if out, err = cmd.CombinedOutput(); err != nil {
			return "", "", fmt.Errorf("%s: %w: %s", strings.Join(c, " "), err, out)
		}
	}
	version, err := imageVersion(out)
	if err != nil {
		return "", "", err
	}
	return image, ImageTag(version), nil
}

// ImageTag is the image tag test/image/build.sh gives a version.
func ImageTag(version string) string { return strings.ReplaceAll(version, "+", "-") }

// imageVersion is the version test/image/build.sh reports it stamped:
// "image: [n/n] writing the OCI index (VERSION, chart appVersion X)".
func imageVersion(out []byte) (string, error) {
	for _, line := range strings.Split(string(out), "\n") {
		if _, rest, ok := strings.Cut(line, "writing the OCI index ("); ok {
			if v, _, ok := strings.Cut(rest, ","); ok && v != "" {
				return v, nil
			}
		}
	}
	return "", fmt.Errorf("test/image/build.sh reported no version:\n%s", out)
}
