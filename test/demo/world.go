package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/isthmus-dev/isthmus/test/cluster"
	"github.com/isthmus-dev/isthmus/test/install"
	"github.com/isthmus-dev/isthmus/test/netnstest"
)

// Prefix starts the name of every network namespace, link and device the
// demo makes.
const Prefix = "isd"

const (
	hubNS       = Prefix + "-hub"
	bridge      = Prefix + "br"
	echoPort    = 8080
	servicePort = 80
	// DNSPort is where each member's resolver listens in its node namespace.
	DNSPort = 1053
	// metricsAddr is where each node's isthmus serves /metrics and /readyz.
	metricsAddr = "127.0.0.1:9470"
	// Namespace and Service are the exported service.
	Namespace = "demo"
	Service   = "echo"
	// LeaseDuration and WithdrawAfter are the agents' grace periods, short
	// so the demo shows a withdrawal in seconds (defaults 30 s and 5 min).
	LeaseDuration = 3 * time.Second
	WithdrawAfter = 6 * time.Second
)

// Options configure Up.
type Options struct {
	// BinDir holds the isthmus and isthmusctl binaries; empty means build
	// them from this module.
	BinDir string
	// Out receives the narration; nil means none.
	Out io.Writer
	// Log receives the harness's log; nil means none.
	Log *slog.Logger
	// WorkDir holds the harness and the daemons' logs; empty means a temp dir.
	WorkDir string
}

// Member is one member cluster of the demo and its node.
type Member struct {
	ID, Region, Zone string
	Cluster          *cluster.Cluster
	// Node, Pods and Client are its network namespaces: the node running
	// kube-proxy and isthmus, the echo pods, and a client pod.
	Node, Pods, Client string
	// Underlay is the node's address on the bridge, the tunnel endpoint.
	Underlay netip.Addr
	// ClientIP is the client pod's address, in the member's pod CIDR.
	ClientIP netip.Addr
	// NodeIP is the kube-proxy node's InternalIP.
	NodeIP netip.Addr
	// Echo says whether the member runs echo pods.
	Echo bool
	// WGDevice is the member's WireGuard interface.
	WGDevice string

	w       *World
	idx     int
	mu      sync.Mutex
	daemon  *proc
	proxy   *proc
	podIPs  map[netip.Addr]bool
	podCIDR netip.Prefix
}

// World is a running demo.
type World struct {
	Clusters *cluster.Clusterset
	Members  []*Member
	Dir      string
	isthmus  string
	ctl      string
	out      io.Writer
	began    time.Time

	// set is the installed clusterset of a demo on real nodes (UpOnNodes);
	// nil when `isthmus all` runs as host processes (Up).
	set *install.Set
	// left is what Down of a real-node demo found still on the host.
	left []string

	mu    sync.Mutex
	stops []func()
	down  sync.Once
}

// OnNodes says whether the demo runs on real nodes with the charts
// (UpOnNodes), not as host processes (Up).
func (w *World) OnNodes() bool { return w.set != nil }

// Member returns the member with the given id.
func (w *World) Member(id string) *Member {
	for _, m := range w.Members {
		if m.ID == id {
			return m
		}
	}
	return nil
}

func (w *World) say(format string, args ...any) {
	if w.out != nil {
		fmt.Fprintf(w.out, "[%6.1fs] %s\n", time.Since(w.began).Seconds(), fmt.Sprintf(format, args...))
	}
}

// Requirements lists the commands the demo runs; Up fails naming any missing.
var Requirements = []string{"ip", "nft", "dig", "wg"}

// Up builds the whole demo and returns once c resolves and reaches the
// echo service. On error everything made is removed again.
func Up(ctx context.Context, opts Options) (_ *World, err error) {
	w := &World{out: opts.Out, began: time.Now()}
	if os.Geteuid() != 0 {
		return nil, errors.New("the demo needs root: it makes network namespaces and TUN devices")
	}
	for _, tool := range Requirements {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("the demo needs %s (make deps installs it): %w", tool, err)
		}
	}
	removeTopology()
	defer func() {
		if err != nil {
			w.Down()
		}
	}()
	if w.Dir, err = os.MkdirTemp(opts.WorkDir, "isthmus-demo-"); err != nil {
		return nil, err
	}
	bin := opts.BinDir
	if bin == "" {
		w.say("building isthmus and isthmusctl")
		bin = w.Dir
		build := exec.CommandContext(ctx, "go", "build", "-o", bin+"/", "github.com/isthmus-dev/isthmus/cmd/isthmus", "github.com/isthmus-dev/isthmus/cmd/isthmusctl")
		if out, err := build.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("building isthmus: %w\n%s", err, out)
		}
	}
	w.isthmus, w.ctl = filepath.Join(bin, "isthmus"), filepath.Join(bin, "isthmusctl")
	for _, b := range []string{w.isthmus, w.ctl} {
		if _, err := os.Stat(b); err != nil {
			return nil, fmt.Errorf("the demo needs %s: %w", b, err)
		}
	}

	w.say("starting a broker and three member clusters (real kube-apiserver, controller-manager, scheduler; KWOK plays the kubelet)")
	t := time.Now()
	w.Clusters, err = cluster.New(ctx, cluster.Options{Broker: true, Members: 3, WorkDir: w.Dir, Log: opts.Log,
		Localities: []cluster.Locality{{Region: "eu", Zone: "eu-1"}, {Region: "us", Zone: "us-1"}, {Region: "eu", Zone: "eu-2"}}})
	if err != nil {
		return nil, err
	}
	w.say("clusterset up in %s", time.Since(t).Round(100*time.Millisecond))
	for i, spec := range []struct {
		id, region, zone string
		echo             bool
	}{{"a", "eu", "eu-1", true}, {"b", "us", "us-1", true}, {"c", "eu", "eu-2", false}} {
		n := i + 1
		c := w.Clusters.Members[i]
		w.Members = append(w.Members, &Member{
			ID: spec.id, Region: spec.region, Zone: spec.zone, Cluster: c, Echo: spec.echo,
			Node: Prefix + "-" + spec.id + "-node", Pods: Prefix + "-" + spec.id + "-pods", Client: Prefix + "-" + spec.id + "-cli",
			Underlay: netip.AddrFrom4([4]byte{192, 168, 240, byte(n)}),
			ClientIP: netip.AddrFrom4([4]byte{10, byte(240 + n), 255, 20}),
			NodeIP:   netip.AddrFrom4([4]byte{10, 200, byte(n), 20}),
			WGDevice: Prefix + "wg" + spec.id,
			w:        w, idx: n, podIPs: map[netip.Addr]bool{},
		})
	}

	t = time.Now()
	if err := w.join(ctx); err != nil {
		return nil, err
	}
	w.say("isthmusctl broker install; isthmusctl join for a, b, c (%s)", time.Since(t).Round(10*time.Millisecond))

	t = time.Now()
	if err := w.plumb(); err != nil {
		return nil, err
	}
	for _, m := range w.Members {
		if err := m.startNode(ctx); err != nil {
			return nil, err
		}
	}
	w.say("node namespaces up: kube-proxy (nftables) and `isthmus all` in each of a, b, c (%s)", time.Since(t).Round(10*time.Millisecond))

	t = time.Now()
	if err := w.deployEcho(ctx); err != nil {
		return nil, err
	}
	w.say("echo deployed and exported in a and b (%s)", time.Since(t).Round(10*time.Millisecond))
	return w, nil
}

// join installs the broker and joins the members with isthmusctl, as a
// user would.
func (w *World) join(ctx context.Context) error {
	kc := w.Clusters.Kubeconfig
	cmds := [][]string{{"broker", "install", "--kubeconfig", kc, "--context", w.Clusters.Broker.Name}}
	for _, m := range w.Members {
		// The hub approves each member's own ranges, as a user should:
		// the broker then refuses it any other range or endpoint address.
		cmds = append(cmds, []string{"join", "--kubeconfig", kc, "--context", m.Cluster.Name, "--broker-context", w.Clusters.Broker.Name, "--cluster-id", m.ID,
			"--pod-cidrs", m.Cluster.PodCIDR.String(), "--service-cidrs", m.Cluster.ServiceCIDR.String()})
	}
	for _, c := range cmds {
		if out, err := exec.CommandContext(ctx, w.ctl, c...).CombinedOutput(); err != nil {
			return fmt.Errorf("isthmusctl %s: %w\n%s", strings.Join(c, " "), err, out)
		}
	}
	return nil
}

// plumb makes the namespaces and links: a bridge in the hub namespace
// carrying the nodes' underlay addresses (and nothing else: no route to
// any pod or service range), and behind each node its pods and client on
// veths, with proxy ARP on the node so the pods need no gateway address.
func (w *World) plumb() error {
	sh := func(cmds ...[]string) error {
		for _, c := range cmds {
			if _, err := netnstest.Sh(c...); err != nil {
				return err
			}
		}
		return nil
	}
	if err := sh(
		[]string{"ip", "netns", "add", hubNS},
		[]string{"ip", "-n", hubNS, "link", "add", bridge, "type", "bridge"},
		[]string{"ip", "-n", hubNS, "link", "set", bridge, "up"},
	); err != nil {
		return err
	}
	for _, m := range w.Members {
		pc, err := m.nodePodCIDR()
		if err != nil {
			return err
		}
		m.podCIDR = pc
		up := Prefix + "-" + m.ID + "-up"
		if err := sh(
			[]string{"ip", "netns", "add", m.Node},
			[]string{"ip", "netns", "add", m.Pods},
			[]string{"ip", "netns", "add", m.Client},
			// underlay
			[]string{"ip", "-n", m.Node, "link", "add", "uplink", "type", "veth", "peer", "name", up, "netns", hubNS},
			[]string{"ip", "-n", hubNS, "link", "set", up, "master", bridge, "up"},
			[]string{"ip", "-n", m.Node, "addr", "add", m.Underlay.String() + "/24", "dev", "uplink"},
			[]string{"ip", "-n", m.Node, "link", "set", "uplink", "up"},
			[]string{"ip", "-n", m.Node, "link", "set", "lo", "up"},
			[]string{"ip", "-n", m.Node, "addr", "add", m.NodeIP.String() + "/32", "dev", "lo"},
			// pods
			[]string{"ip", "-n", m.Node, "link", "add", "vpods", "type", "veth", "peer", "name", "eth0", "netns", m.Pods},
			[]string{"ip", "-n", m.Node, "link", "set", "vpods", "up"},
			[]string{"ip", "-n", m.Node, "route", "add", pc.String(), "dev", "vpods"},
			// The Service range must be routable for proxy ARP to answer
			// for a ClusterIP; kube-proxy rewrites the address before the
			// route is used.
			[]string{"ip", "-n", m.Node, "route", "add", m.Cluster.ServiceCIDR.String(), "dev", "vpods"},
			[]string{"ip", "-n", m.Pods, "link", "set", "lo", "up"},
			[]string{"ip", "-n", m.Pods, "link", "set", "eth0", "up"},
			// A fixed address no pod gets: without one, removing the last
			// pod IP would flush the default route with it.
			[]string{"ip", "-n", m.Pods, "addr", "add", m.podsAnchor().String() + "/32", "dev", "eth0"},
			[]string{"ip", "-n", m.Pods, "route", "add", "default", "dev", "eth0"},
			// client
			[]string{"ip", "-n", m.Node, "link", "add", "vcli", "type", "veth", "peer", "name", "eth0", "netns", m.Client},
			[]string{"ip", "-n", m.Node, "link", "set", "vcli", "up"},
			[]string{"ip", "-n", m.Node, "route", "add", m.ClientIP.String() + "/32", "dev", "vcli"},
			[]string{"ip", "-n", m.Client, "link", "set", "lo", "up"},
			[]string{"ip", "-n", m.Client, "addr", "add", m.ClientIP.String() + "/32", "dev", "eth0"},
			[]string{"ip", "-n", m.Client, "link", "set", "eth0", "up"},
			[]string{"ip", "-n", m.Client, "route", "add", "default", "dev", "eth0"},
			[]string{"ip", "netns", "exec", m.Node, "sysctl", "-qw", "net.ipv4.ip_forward=1",
				"net.ipv4.conf.vpods.proxy_arp=1", "net.ipv4.conf.vcli.proxy_arp=1"},
		); err != nil {
			return fmt.Errorf("plumbing %s: %w", m.ID, err)
		}
		// The daemons reach their apiservers on the host's loopback
		// through a relay, never through the tunnels.
		for _, host := range []string{m.Cluster.Config.Host, w.Clusters.Broker.Config.Host} {
			u, err := url.Parse(host)
			if err != nil {
				return err
			}
			stop, err := netnstest.Forward(m.Node, u.Host)
			if err != nil {
				return fmt.Errorf("relaying %s into %s: %w", u.Host, m.Node, err)
			}
			w.addStop(stop)
		}
	}
	return nil
}

func (w *World) addStop(f func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stops = append(w.stops, f)
}

// podsAnchor is the pod namespace's own address: in the member's pod
// range, outside the /24s the controller manager hands its two nodes.
func (m *Member) podsAnchor() netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(240 + m.idx), 254, 1})
}

// nodePodCIDR is the pod range the controller manager gave the member's
// KWOK node: its pods take their IPs from it.
func (m *Member) nodePodCIDR() (netip.Prefix, error) {
	n, err := m.Cluster.Client.CoreV1().Nodes().Get(context.Background(), cluster.NodeName, metav1.GetOptions{})
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%s: reading node %s: %w", m.ID, cluster.NodeName, err)
	}
	return netip.ParsePrefix(n.Spec.PodCIDR)
}

// nodeName is the Node object kube-proxy runs as: static, so KWOK never
// rewrites its addresses (kube-proxy exits when they change), and tainted
// so no pod lands on it.
func (m *Member) nodeName() string { return "node-" + m.ID }

func (m *Member) startNode(ctx context.Context) error {
	nodes := m.Cluster.Client.CoreV1().Nodes()
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: m.nodeName(), Labels: map[string]string{
			"kubernetes.io/hostname": m.nodeName(), corev1.LabelTopologyRegion: m.Region, corev1.LabelTopologyZone: m.Zone}},
		Spec: corev1.NodeSpec{Taints: []corev1.Taint{{Key: "isthmus.dev/demo-node", Effect: corev1.TaintEffectNoSchedule}}},
	}
	if _, err := nodes.Create(ctx, node, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("%s: creating node %s: %w", m.ID, m.nodeName(), err)
	}
	patch := fmt.Sprintf(`{"status":{"addresses":[{"type":"InternalIP","address":%q},{"type":"Hostname","address":%q}]}}`, m.NodeIP, m.nodeName())
	if _, err := nodes.Patch(ctx, m.nodeName(), types.MergePatchType, []byte(patch), metav1.PatchOptions{}, "status"); err != nil {
		return fmt.Errorf("%s: setting node addresses: %w", m.ID, err)
	}
	dir := filepath.Join(m.w.Dir, "node-"+m.ID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	proxyConfig := filepath.Join(dir, "kube-proxy.kubeconfig")
	if err := m.Cluster.WriteKubeconfig(proxyConfig, "system:kube-proxy"); err != nil {
		return err
	}
	var err error
	m.proxy, err = startIn(m.Node, filepath.Join(dir, "kube-proxy.log"), m.w.Clusters.KubeProxy(),
		"--kubeconfig="+proxyConfig, "--proxy-mode=nftables", "--hostname-override="+m.nodeName(),
		"--cluster-cidr="+m.Cluster.PodCIDR.String(), "--conntrack-max-per-core=0",
		"--metrics-bind-address=127.0.0.1:10249", "--healthz-bind-address=127.0.0.1:10256", "--v=1")
	if err != nil {
		return fmt.Errorf("%s: starting kube-proxy: %w", m.ID, err)
	}
	return m.StartIsthmus()
}

// StartIsthmus runs `isthmus all` in the member's node namespace, with
// its own admin kubeconfig and the broker credential join stored.
func (m *Member) StartIsthmus() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	log := filepath.Join(m.w.Dir, "node-"+m.ID, "isthmus.log")
	certs := m.certDir(m.workloadSA())
	if err := os.MkdirAll(certs, 0o700); err != nil {
		return err
	}
	p, err := startIn(m.Node, log, m.w.isthmus, "all",
		"--kubeconfig", m.Cluster.Kubeconfig, "--cluster-id", m.ID, "--metrics-addr", metricsAddr,
		"--region", m.Region, "--zone", m.Zone, "--lease-duration", LeaseDuration.String(),
		"--agent-pod-cidrs", m.Cluster.PodCIDR.String(), "--agent-service-cidrs", m.Cluster.ServiceCIDR.String(),
		"--agent-withdraw-after", WithdrawAfter.String(),
		"--dns-listen", fmt.Sprintf("127.0.0.1:%d", DNSPort),
		"--xds-listen", xdsAddr,
		"--xds-workload-certs", Namespace+"/"+m.workloadSA()+"="+certs,
		"--tunnel-device", m.WGDevice, "--tunnel-endpoint", m.Underlay.String()+":51820",
		"--tunnel-resync", "5s", "--tunnel-status-interval", "1s", "--tunnel-keepalive", "2s",
		"--tunnel-leader-elect-identity", m.Node, "--tunnel-leader-elect-lease-duration", "4s",
		"--tunnel-leader-elect-renew-deadline", "3s", "--tunnel-leader-elect-retry-period", "500ms")
	if err != nil {
		return fmt.Errorf("%s: starting isthmus: %w", m.ID, err)
	}
	m.daemon = p
	return nil
}

// KillIsthmus ends the member's `isthmus all` at once, as a crash or a
// lost node would: nothing is cleaned up or handed over.
func (m *Member) KillIsthmus() {
	m.mu.Lock()
	p := m.daemon
	m.daemon = nil
	m.mu.Unlock()
	if p != nil {
		p.stop(syscall.SIGKILL)
	}
}

// CutOff takes the member's node off the bridge (the underlay on real
// nodes): its tunnels go dark.
func (m *Member) CutOff() error {
	if m.w.OnNodes() {
		return m.cutNode(context.Background())
	}
	_, err := netnstest.Sh("ip", "-n", m.Node, "link", "set", "uplink", "down")
	return err
}

// IsthmusLog is the member's daemon log file.
func (m *Member) IsthmusLog() string { return filepath.Join(m.w.Dir, "node-"+m.ID, "isthmus.log") }

// Down stops everything the demo started and removes every namespace.
// Safe to call more than once.
func (w *World) Down() {
	w.down.Do(func() {
		for _, m := range w.Members {
			m.mu.Lock()
			procs := []*proc{m.daemon, m.proxy}
			m.daemon, m.proxy = nil, nil
			m.mu.Unlock()
			for _, p := range procs {
				if p != nil {
					p.stop(syscall.SIGTERM)
				}
			}
		}
		w.mu.Lock()
		for _, s := range w.stops {
			s()
		}
		w.stops = nil
		w.mu.Unlock()
		removeTopology()
		var pids []int
		var harness string
		if w.Clusters != nil {
			pids, harness = w.Clusters.PIDs(), w.Clusters.Dir
			w.Clusters.Stop()
		}
		if w.Dir != "" {
			_ = os.RemoveAll(w.Dir)
		}
		if w.OnNodes() {
			w.left = nodeLeftovers(pids, harness, w.Dir)
		}
	})
}

// Leftovers lists what of this demo is still on the host after Down:
// for host processes the package's Leftovers; on real nodes the
// harness's processes, mounts and directories. Empty after a clean Down.
func (w *World) Leftovers() []string {
	if w.OnNodes() {
		return w.left
	}
	return Leftovers()
}

// removeTopology deletes every namespace of the demo, from this run or an
// earlier one that was killed; their links and devices go with them.
func removeTopology() {
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		if strings.HasPrefix(name, Prefix+"-") {
			_ = exec.Command("ip", "netns", "del", name).Run()
		}
	}
	// A killed userspace WireGuard device leaves its UAPI socket behind.
	socks, _ := filepath.Glob("/var/run/wireguard/" + Prefix + "*.sock")
	for _, s := range socks {
		_ = os.Remove(s)
	}
}

// Leftovers lists what of the demo still exists on the host: namespaces
// and WireGuard sockets. Empty after Down.
func Leftovers() []string {
	var left []string
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, line := range strings.Split(string(out), "\n") {
		if name, _, _ := strings.Cut(strings.TrimSpace(line), " "); strings.HasPrefix(name, Prefix+"-") {
			left = append(left, "netns "+name)
		}
	}
	socks, _ := filepath.Glob("/var/run/wireguard/" + Prefix + "*")
	for _, s := range socks {
		left = append(left, "socket "+s)
	}
	return left
}
