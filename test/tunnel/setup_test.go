package tunnel

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/api/crds"
	"github.com/isthmus-dev/isthmus/test/cluster"
	"github.com/isthmus-dev/isthmus/test/netnstest"
)

// The topology. Every name starts with tnl so nothing else is touched.
const (
	hubNS       = "tnlhub"
	bridge      = "tnlbr"
	brokerNS    = "isthmus-broker"
	routeProto  = 158
	routeTable  = "51820" // the daemon's default
	rulePref    = "32000" // likewise
	resync      = 2 * time.Second
	podPort     = 7007
	metricsAddr = "127.0.0.1:9093"
	agentFields = "tnl-test-agent"
	// leaseDuration is how long a killed gateway's Lease blocks its
	// standby in these tests (production default 15 s).
	leaseDuration = 4 * time.Second
)

// member is one simulated cluster: a namespace holding its gateway (the
// daemon) and one pod address.
type member struct {
	id       string // cluster id and record name
	ns       string // network namespace
	dev      string // WireGuard interface, unique on the host
	underlay string // gateway address on the bridge
	podCIDR  string
	svcCIDR  string
	pod      string // a pod's IP, on the namespace's loopback

	mu      sync.Mutex
	cmd     *exec.Cmd
	logs    *bytes.Buffer
	exited  chan error
	podConn *net.UDPConn
}

func (m *member) endpoint() string { return m.underlay + ":51820" }

type world struct {
	bin     string
	ctl     string // isthmusctl
	kc      string
	broker  dynamic.Interface
	cs      *cluster.Clusterset
	members []*member
	stops   []func()
}

var w *world

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "the tunnel tests need root (network namespaces, TUN devices); run them as root, as CI does")
		return 1
	}
	for _, tool := range []string{"ip", "wg", "tcpdump"} {
		if _, err := exec.LookPath(tool); err != nil {
			fmt.Fprintf(os.Stderr, "the tunnel tests need %s (make deps installs it): %v\n", tool, err)
			return 1
		}
	}
	dir, err := os.MkdirTemp("", "tnl-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "isthmus")
	build := exec.Command("go", "build", "-o", dir+"/", "github.com/isthmus-dev/isthmus/cmd/isthmus", "github.com/isthmus-dev/isthmus/cmd/isthmusctl")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building isthmus and isthmusctl:", err)
		return 1
	}
	cs, err := cluster.New(context.Background(), cluster.Options{Broker: true, Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting the broker:", err)
		return 1
	}
	defer cs.Stop()
	w = &world{bin: bin, ctl: filepath.Join(dir, "isthmusctl"), cs: cs, kc: cs.Broker.Kubeconfig}
	defer w.teardown()
	if err := w.setup(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "setting up the tunnel topology:", err)
		for _, mb := range w.members {
			fmt.Fprintf(os.Stderr, "--- %s daemon log ---\n%s\n", mb.id, mb.log())
		}
		return 1
	}
	return m.Run()
}

func (w *world) setup(ctx context.Context) error {
	var err error
	if w.broker, err = dynamic.NewForConfig(w.cs.Broker.Config); err != nil {
		return err
	}
	if err := installCRDs(ctx, w.cs.Broker); err != nil {
		return err
	}
	w.members = []*member{
		{id: "tnl-a", ns: "tnla", dev: "tnlwga", underlay: "192.0.2.1", podCIDR: "10.201.0.0/16", svcCIDR: "10.211.0.0/16", pod: "10.201.0.10"},
		{id: "tnl-b", ns: "tnlb", dev: "tnlwgb", underlay: "192.0.2.2", podCIDR: "10.202.0.0/16", svcCIDR: "10.212.0.0/16", pod: "10.202.0.10"},
		{id: "tnl-c", ns: "tnlc", dev: "tnlwgc", underlay: "192.0.2.3", podCIDR: "10.203.0.0/16", svcCIDR: "10.213.0.0/16", pod: "10.203.0.10"},
	}
	for _, ns := range []string{brokerNS, "tnl-a-system", "tnl-b-system", "tnl-c-system"} {
		_, err := w.cs.Broker.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating namespace %s: %w", ns, err)
		}
	}
	removeTopology()
	if _, err := netnstest.Sh("ip", "netns", "add", hubNS); err != nil {
		return err
	}
	for _, c := range [][]string{
		{"ip", "-n", hubNS, "link", "add", bridge, "type", "bridge"},
		{"ip", "-n", hubNS, "link", "set", bridge, "up"},
	} {
		if _, err := netnstest.Sh(c...); err != nil {
			return err
		}
	}
	u, err := url.Parse(w.cs.Broker.Config.Host)
	if err != nil {
		return err
	}
	for _, mb := range w.members {
		if err := plumb(mb); err != nil {
			return err
		}
		stop, err := netnstest.Forward(mb.ns, u.Host)
		if err != nil {
			return fmt.Errorf("forwarding the broker into %s: %w", mb.ns, err)
		}
		w.stops = append(w.stops, stop)
		if mb.podConn, err = listenUDPIn(mb.ns, net.JoinHostPort(mb.pod, strconv.Itoa(podPort))); err != nil {
			return fmt.Errorf("serving the pod in %s: %w", mb.ns, err)
		}
		go echo(mb.podConn)
		if err := w.applyAgentFields(ctx, mb.id, []string{mb.podCIDR}, []string{mb.svcCIDR}); err != nil {
			return err
		}
	}
	for _, mb := range w.members {
		if err := w.start(mb); err != nil {
			return err
		}
	}
	return w.waitMeshUp(ctx, 60*time.Second)
}

// plumb gives a member its namespace, a veth to the bridge with its
// underlay address, and its pod address. The underlay carries no route to
// any pod CIDR: only the tunnel can.
func plumb(mb *member) error {
	hostSide := mb.ns + "h"
	for _, c := range [][]string{
		{"ip", "netns", "add", mb.ns},
		{"ip", "link", "add", mb.ns + "0", "netns", mb.ns, "type", "veth", "peer", "name", hostSide, "netns", hubNS},
		{"ip", "-n", hubNS, "link", "set", hostSide, "master", bridge, "up"},
		{"ip", "-n", mb.ns, "addr", "add", mb.underlay + "/24", "dev", mb.ns + "0"},
		{"ip", "-n", mb.ns, "link", "set", mb.ns + "0", "up"},
		{"ip", "-n", mb.ns, "link", "set", "lo", "up"},
		{"ip", "-n", mb.ns, "addr", "add", mb.pod + "/32", "dev", "lo"},
	} {
		if _, err := netnstest.Sh(c...); err != nil {
			return err
		}
	}
	return nil
}

// removeTopology deletes every namespace of ours, from this run or a
// crashed earlier one; their interfaces go with them.
func removeTopology() {
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		if strings.HasPrefix(name, "tnl") {
			_ = exec.Command("ip", "netns", "del", name).Run()
		}
	}
}

func (w *world) teardown() {
	for _, mb := range w.members {
		mb.stop(syscall.SIGTERM)
	}
	for _, s := range w.stops {
		s()
	}
	for _, mb := range w.members {
		if mb.podConn != nil {
			mb.podConn.Close()
		}
	}
	removeTopology()
}

// start runs the daemon inside the member's namespace.
func (w *world) start(mb *member, extra ...string) error {
	mb.mu.Lock()
	defer mb.mu.Unlock()
	args := append([]string{"netns", "exec", mb.ns, w.bin, "tunnel",
		"--kubeconfig", w.kc, "--broker-kubeconfig", w.kc, "--broker-namespace", brokerNS,
		"--cluster-id", mb.id, "--device", mb.dev, "--endpoint", mb.endpoint(),
		"--key-namespace", mb.id + "-system", "--resync", resync.String(), "--status-interval", "500ms",
		"--route-protocol", strconv.Itoa(routeProto), "--metrics-addr", metricsAddr,
		"--leader-elect-identity", mb.ns, "--leader-elect-lease-duration", leaseDuration.String(),
		"--leader-elect-renew-deadline", "3s", "--leader-elect-retry-period", "500ms",
	}, extra...)
	cmd := exec.Command("ip", args...)
	if mb.logs == nil {
		mb.logs = &bytes.Buffer{}
	}
	fmt.Fprintf(mb.logs, "=== start %s\n", time.Now().Format(time.StampMilli))
	cmd.Stdout, cmd.Stderr = lockedWriter{&mb.mu, mb.logs}, lockedWriter{&mb.mu, mb.logs}
	cmd.Env = append(os.Environ(), "ISTHMUS_LOG_LEVEL=debug")
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting the tunnel of %s: %w", mb.id, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	mb.cmd, mb.exited = cmd, exited
	return nil
}

// stop signals the daemon (by its PID: `ip netns exec` execs it) and
// waits for it to exit, returning how it exited.
func (mb *member) stop(sig syscall.Signal) error {
	mb.mu.Lock()
	cmd, exited := mb.cmd, mb.exited
	mb.cmd = nil
	mb.mu.Unlock()
	if cmd == nil {
		return nil
	}
	_ = cmd.Process.Signal(sig)
	select {
	case err := <-exited:
		return err
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
		return fmt.Errorf("%s did not exit within 15s of %s", mb.id, sig)
	}
}

func (mb *member) log() string {
	mb.mu.Lock()
	defer mb.mu.Unlock()
	if mb.logs == nil {
		return ""
	}
	return mb.logs.String()
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// applyAgentFields writes what the agent owns on a cluster record (its
// CIDRs), under a field manager of its own, as the agent would.
func (w *world) applyAgentFields(ctx context.Context, id string, pods, svcs []string) error {
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": brokerv1.SchemeGroupVersion.String(),
		"kind":       "Cluster",
		"metadata":   map[string]any{"name": id, "namespace": brokerNS, "labels": map[string]any{brokerv1.LabelSourceCluster: id}},
		"spec":       map[string]any{"clusterID": id, "podCIDRs": toAny(pods), "serviceCIDRs": toAny(svcs)},
	}}
	_, err := w.broker.Resource(brokerv1.ClustersResource).Namespace(brokerNS).Apply(ctx, id, obj,
		metav1.ApplyOptions{FieldManager: agentFields, Force: true})
	if err != nil {
		return fmt.Errorf("applying the agent's fields of %s: %w", id, err)
	}
	return nil
}

func toAny(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

// record reads a cluster record from the broker.
func (w *world) record(ctx context.Context, id string) (*brokerv1.Cluster, error) {
	u, err := w.broker.Resource(brokerv1.ClustersResource).Namespace(brokerNS).Get(ctx, id, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	var c brokerv1.Cluster
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &c); err != nil {
		return nil, err
	}
	return &c, nil
}

func condition(c *brokerv1.Cluster, typ string) *metav1.Condition {
	for i := range c.Status.Conditions {
		if c.Status.Conditions[i].Type == typ {
			return &c.Status.Conditions[i]
		}
	}
	return nil
}

// waitMeshUp waits until every member's pod reaches every other's.
func (w *world) waitMeshUp(ctx context.Context, timeout time.Duration) error {
	var last error
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		last = w.meshErr()
		return last == nil, nil
	})
	if err != nil {
		return fmt.Errorf("pods did not reach each other through the tunnels: %v", last)
	}
	return nil
}

func (w *world) meshErr() error {
	for _, from := range w.members {
		for _, to := range w.members {
			if from == to {
				continue
			}
			if err := reach(from, to, []byte("mesh-check"), 500*time.Millisecond); err != nil {
				return fmt.Errorf("%s -> %s: %w", from.id, to.id, err)
			}
		}
	}
	return nil
}

// reach sends payload from a fresh socket on from's pod address to to's pod
// and waits for the echo.
func reach(from, to *member, payload []byte, timeout time.Duration) error {
	c, err := listenUDPIn(from.ns, net.JoinHostPort(from.pod, "0"))
	if err != nil {
		return err
	}
	defer c.Close()
	return roundTrip(c, &net.UDPAddr{IP: net.ParseIP(to.pod), Port: podPort}, payload, timeout)
}

// scrape reads a member's /metrics (or another path) from inside its
// namespace.
func scrape(ctx context.Context, mb *member, path string) (int, string, error) {
	client := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return dialTCPIn(ctx, mb.ns, addr) },
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+metricsAddr+path, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func installCRDs(ctx context.Context, c *cluster.Cluster) error {
	list, err := crds.Broker()
	if err != nil {
		return err
	}
	return c.InstallCRDs(ctx, list)
}

// wgDevice reads a member's device through wgctrl, as `wg show` does.
func wgDevice(t *testing.T, mb *member) *wgDeviceInfo {
	t.Helper()
	c, err := wgctrl.New()
	if err != nil {
		t.Fatalf("wgctrl: %v", err)
	}
	defer c.Close()
	d, err := c.Device(mb.dev)
	if err != nil {
		t.Fatalf("reading %s: %v", mb.dev, err)
	}
	info := &wgDeviceInfo{pub: d.PublicKey.String(), peers: map[string]peerInfo{}}
	for _, p := range d.Peers {
		info.peers[p.PublicKey.String()] = peerInfo{handshake: p.LastHandshakeTime, rx: p.ReceiveBytes, tx: p.TransmitBytes, allowed: len(p.AllowedIPs), endpoint: fmt.Sprint(p.Endpoint)}
	}
	return info
}

type wgDeviceInfo struct {
	pub   string
	peers map[string]peerInfo
}

type peerInfo struct {
	handshake time.Time
	rx, tx    int64
	allowed   int
	endpoint  string
}
