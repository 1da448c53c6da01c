package cluster

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// A real node is a kubelet, containerd (with runc and the CNI bridge) and
// kube-proxy in a network and mount namespace of their own, held open by
// a sleeping process started with `unshare --net --mount`; every node
// process is started into both with `nsenter` (never `ip netns exec`,
// which remounts /sys and would hide the cgroup tree from the kubelet and
// runc). Inside the mount namespace tmpfs covers the host paths containerd
// 1.6, runc, the CNI plugins and the kubelet hard-code, and files holding
// the kubelet's expected values are bound over the machine-wide sysctls it
// would otherwise set. Everything else (configuration, state, logs, pod
// volumes, images) lives under the member's directory.
//
// The node's processes, and with them containerd's shims and every
// container, run below a cgroup of the node's own (cgroupRoot, created in
// every hierarchy), which is also the kubelet's cgroupRoot: a second
// kubelet on the machine never sees, and never reaps, this one's pods,
// and Stop kills whatever is left in it by PID before removing it.

// hostMountPoints are the host paths the node covers with tmpfs. A missing
// one is created on the host and left there: removing a directory detaches
// the mounts on it in every namespace, another node's included.
// /var/log/pods is among them because the kubelet reads container logs
// where the runtime reports them, under /var/log/pods whatever its
// podLogsDirectory says; shared, another node's kubelet removed them as
// orphans, and `kubectl logs` of a running pod failed ("no such file").
var hostMountPoints = []string{"/run/containerd", "/run/netns", "/var/lib/cni", "/var/log/containers", "/var/log/pods"}

// nodeSysctls are the values the kubelet wants; bound over /proc/sys in
// the node's mount namespace, the kubelet finds them set and changes
// nothing machine-wide.
var nodeSysctls = map[string]string{
	"vm/overcommit_memory":      "1",
	"vm/panic_on_oom":           "0",
	"kernel/panic":              "10",
	"kernel/panic_on_oops":      "1",
	"kernel/keys/root_maxkeys":  "1000000",
	"kernel/keys/root_maxbytes": "25000000",
}

const (
	// pauseImage is the sandbox image containerd is configured with; the
	// harness builds it (test/image/pause) and imports it at start.
	pauseImage = "registry.k8s.io/pause:3.10"
	// TestServerImage is the workload image every real node has
	// (test/image/testserver): HTTP on 8080 and the subcommands whoami,
	// apicheck, get URL and resolve NAME for exec.
	TestServerImage = "isthmus.test/testserver:v1"
	underlayBridge  = "underlay0"
	// nodePrefixLen makes one subnet of every node's IP, 10.200.<i>.10, on
	// the underlay bridge.
	nodePrefixLen = 16
)

type realNode struct {
	name    string
	ip      netip.Addr
	ips     []netip.Addr // ip first, then a dual-stack node's IPv6 address
	dir     string
	cgroup  string // below each hierarchy's root, e.g. /isthmus-cluster-123-member1
	cluster *Cluster
	bins    binaries
	images  []string

	holder, containerd, kubelet, proxy *process
	stops                              []func()
	// readyAfter is how long the node took from its kubelet's start to
	// Ready.
	readyAfter time.Duration
}

func (n *realNode) path(parts ...string) string {
	return filepath.Join(append([]string{n.dir}, parts...)...)
}

func (n *realNode) socket() string { return n.path("run", "containerd.sock") }

// nsenter returns a command run in the node's network and mount
// namespaces. nsenter -m starts in /, so every path given is absolute.
func (n *realNode) nsenter(ctx context.Context, args ...string) *exec.Cmd {
	pid := n.holderPID()
	return exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(pid), "-n", "-m", "--"}, args...)...)
}

func (n *realNode) holderPID() int {
	n.holder.mu.Lock()
	defer n.holder.mu.Unlock()
	if n.holder.cmd == nil {
		return -1
	}
	return n.holder.cmd.Process.Pid
}

func (n *realNode) run(ctx context.Context, args ...string) error {
	out, err := n.nsenter(ctx, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %s: %w: %s", n.name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// inNode makes p a process started in the node's namespaces and recorded
// under its real binary, so a later harness's sweep recognises it.
func (n *realNode) inNode(p *process) *process {
	p.exe = resolve(p.bin)
	p.args = append([]string{"-t", "", "-n", "-m", "--", p.bin}, p.args...)
	p.bin = "nsenter"
	p.beforeStart = func(p *process) { p.args[1] = strconv.Itoa(n.holderPID()) }
	p.afterStart = func(pid int) error { return joinCgroup(n.cgroup+"/runtime", pid) }
	return p
}

func resolve(bin string) string {
	if p, err := exec.LookPath(bin); err == nil {
		bin = p
	}
	if p, err := filepath.EvalSymlinks(bin); err == nil {
		return p
	}
	return bin
}

// prepare writes the node's configuration and starts its namespaces,
// network, mounts and relays: everything the apiserver needs before it
// starts (the egress proxy it is configured with) and the node before its
// daemons do.
func (n *realNode) prepare(ctx context.Context, underlayPID, apiPort int) error {
	for _, d := range []string{"etc/cni/net.d", "run", "lib/containerd", "state/containerd", "opt", "kubelet/pki", "log/pods", "cni-ipam", "sysctl", "volume-plugins"} {
		if err := os.MkdirAll(n.path(d), 0o755); err != nil {
			return err
		}
	}
	for _, d := range hostMountPoints {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("making mount point %s: %w", d, err)
		}
	}
	if err := makeCgroup(n.cgroup + "/runtime"); err != nil {
		return err
	}
	pid, err := startHolder(ctx, n.holder)
	if err != nil {
		return err
	}
	if err := joinCgroup(n.cgroup+"/runtime", pid); err != nil {
		return err
	}

	peer := "u-" + n.cluster.Name
	steps := [][]string{
		{"ip", "link", "set", "lo", "up"},
		{"ip", "link", "add", "eth0", "type", "veth", "peer", "name", peer, "netns", strconv.Itoa(underlayPID)},
		{"ip", "addr", "add", netip.PrefixFrom(n.ip, nodePrefixLen).String(), "dev", "eth0"},
		{"ip", "link", "set", "eth0", "up"},
		// No default route: nothing on the node reaches another network.
		// The service range is routed so the node's own connections to a
		// ClusterIP get a route lookup; kube-proxy rewrites them before.
		{"ip", "route", "add", n.cluster.ServiceCIDR.String(), "dev", "eth0"},
		// Pods reach the one outside service the underlay offers, the
		// broker, as a cluster's pods reach the internet: masqueraded
		// behind the node's address. Nothing else of theirs leaves
		// through eth0 with a new source.
		{"nft", "add", "table", "ip", "isthmus-node"},
		{"nft", "add", "chain", "ip", "isthmus-node", "postrouting", "{ type nat hook postrouting priority srcnat; }"},
		{"nft", "add", "rule", "ip", "isthmus-node", "postrouting", "ip", "saddr", n.cluster.PodCIDR.String(),
			"ip", "daddr", underlayGateway.String(), "oifname", "eth0", "masquerade"},
	}
	if len(n.ips) > 1 {
		// A dual-stack node: its IPv6 address (nodad: the underlay is
		// ours, and the kubelet checks its node IPs exist when it starts)
		// and the route for its own connections to IPv6 ClusterIPs. The
		// pod-to-broker masquerade above stays IPv4: the broker is.
		steps = append(steps,
			[]string{"ip", "addr", "add", netip.PrefixFrom(n.ips[1], underlay6.Bits()).String(), "dev", "eth0", "nodad"},
			[]string{"ip", "route", "add", n.cluster.ServiceCIDRs[1].String(), "dev", "eth0"})
	}
	for _, d := range hostMountPoints {
		steps = append(steps, []string{"mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", d})
	}
	for key, value := range nodeSysctls {
		file := n.path("sysctl", strings.ReplaceAll(key, "/", "."))
		if err := os.WriteFile(file, []byte(value+"\n"), 0o644); err != nil {
			return err
		}
		steps = append(steps, []string{"mount", "--bind", file, "/proc/sys/" + key})
	}
	for _, s := range steps {
		if err := n.run(ctx, s...); err != nil {
			return err
		}
	}
	attach := exec.CommandContext(ctx, "nsenter", "-t", strconv.Itoa(underlayPID), "-n", "--", "ip", "link", "set", peer, "master", underlayBridge, "up")
	if out, err := attach.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: attaching %s to the underlay: %w: %s", n.name, peer, err, out)
	}

	stop, err := relayIntoNode(pid, netip.AddrPortFrom(n.ip, uint16(apiPort)).String(), "127.0.0.1:"+strconv.Itoa(apiPort))
	if err != nil {
		return fmt.Errorf("%s: relaying the apiserver into the node: %w", n.name, err)
	}
	n.stops = append(n.stops, stop)
	if stop, err = connectProxy(n.path("egress.sock"), pid); err != nil {
		return fmt.Errorf("%s: the apiserver's egress proxy: %w", n.name, err)
	}
	n.stops = append(n.stops, stop)
	return nil
}

// startDaemons starts containerd, imports the images, starts the kubelet
// and kube-proxy, gives the node its CNI configuration once it has a pod
// range, and waits until it is Ready.
func (n *realNode) startDaemons(ctx context.Context) error {
	if err := n.containerd.start(); err != nil {
		return err
	}
	if err := waitFor(ctx, 50*time.Millisecond, []*process{n.containerd}, func(ctx context.Context) error {
		return n.run(ctx, "ctr", "--address", n.socket(), "version")
	}); err != nil {
		return err
	}
	for _, img := range n.images {
		if err := n.ImportImage(ctx, img); err != nil {
			return err
		}
	}
	// The kubelet makes its root directory a shared mount at start, by
	// bind-mounting it onto itself unless it already is one, while its
	// pods API listener renames a socket into that directory: a rename
	// begun before the bind mount ends across two mounts ("invalid
	// cross-device link", the kubelet exits; a CI run of 2026-12-07). Made
	// shared here first, the kubelet leaves it as it is.
	root := n.path("kubelet")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	if err := n.run(ctx, "mount", "--bind", root, root); err != nil {
		return err
	}
	if err := n.run(ctx, "mount", "--make-rshared", root); err != nil {
		return err
	}
	kubeletStarted := time.Now()
	if err := n.kubelet.start(); err != nil {
		return err
	}
	if err := n.proxy.start(); err != nil {
		return err
	}
	c := n.cluster
	var podCIDRs []string
	if err := waitFor(ctx, 100*time.Millisecond, []*process{n.kubelet, n.containerd}, func(ctx context.Context) error {
		node, err := c.Client.CoreV1().Nodes().Get(ctx, n.name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		// The controller manager gives a dual-stack node both families'
		// ranges at once.
		if podCIDRs = node.Spec.PodCIDRs; len(podCIDRs) < len(c.PodCIDRs) {
			return fmt.Errorf("node has pod CIDRs %v yet, want one in each of %v", podCIDRs, c.PodCIDRs)
		}
		return nil
	}); err != nil {
		return err
	}
	// containerd watches the directory and loads the network when the file
	// appears; until then the node reports its network not ready.
	if err := os.WriteFile(n.path("etc/cni/net.d/10-bridge.conflist"), []byte(cniConfig(podCIDRs, n.path("cni-ipam"))), 0o644); err != nil {
		return err
	}
	err := waitFor(ctx, 100*time.Millisecond, []*process{n.kubelet, n.containerd, n.proxy}, func(ctx context.Context) error {
		node, err := c.Client.CoreV1().Nodes().Get(ctx, n.name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !nodeReady(node) {
			return errors.New("node not Ready yet")
		}
		_, err = c.Client.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{})
		return err
	})
	n.readyAfter = time.Since(kubeletStarted)
	return err
}

// ImportImage imports an image archive (docker-archive or OCI layout, as
// `ctr images import` reads) into the node's containerd, where the kubelet
// finds it: pods use it with imagePullPolicy Never or IfNotPresent.
func (n *realNode) ImportImage(ctx context.Context, archive string) error {
	abs, err := filepath.Abs(archive)
	if err != nil {
		return err
	}
	return n.run(ctx, "ctr", "--address", n.socket(), "-n", "k8s.io", "images", "import", "--all-platforms", abs)
}

// stop ends the node: the kubelet and kube-proxy, then containerd, each
// with a grace period, then by SIGKILL whatever is left in the node's
// cgroups (shims, containers, the namespace holder), and removes those
// cgroups. The namespaces, their mounts and interfaces (the veth into the
// underlay, the CNI bridge, pod sandboxes) end with their last process.
func (n *realNode) stop() error {
	namespaces := namespacesOf(n.holderPID())
	for _, p := range []*process{n.kubelet, n.proxy} {
		p.stop(5 * time.Second)
	}
	n.containerd.stop(5 * time.Second)
	err := removeCgroupTree(n.cgroup, 20*time.Second)
	n.holder.stop(time.Second)
	// A process can be in the node's namespaces and in none of its
	// cgroups: a CI run (2026-12-06) found one left in the node's mount
	// namespace but another network namespace after all of the above,
	// which is what a runc init joining a pod looks like mid-way.
	err = errors.Join(err, killInNamespaces(namespaces, 5*time.Second))
	for _, s := range n.stops {
		s()
	}
	return err
}

// namespacesOf names pid's network and mount namespaces (as their
// /proc links read); none for a process that is gone.
func namespacesOf(pid int) []string {
	var ids []string
	for _, ns := range []string{"net", "mnt"} {
		if id, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, ns)); err == nil {
			ids = append(ids, id)
		}
	}
	return ids
}

// killInNamespaces SIGKILLs every process in any of the namespaces until
// none is left, or fails after timeout.
func killInNamespaces(namespaces []string, timeout time.Duration) error {
	if len(namespaces) == 0 {
		return nil
	}
	in := func() []int {
		var pids []int
		procs, _ := filepath.Glob("/proc/[0-9]*")
		for _, p := range procs {
			pid, _ := strconv.Atoi(filepath.Base(p))
			if pid == os.Getpid() {
				continue
			}
			if ids := namespacesOf(pid); slices.ContainsFunc(ids, func(id string) bool { return slices.Contains(namespaces, id) }) {
				pids = append(pids, pid)
			}
		}
		return pids
	}
	if left := killUntilGone(in, time.Now().Add(timeout)); len(left) > 0 {
		return fmt.Errorf("processes %v survive SIGKILL in namespaces %v", left, namespaces)
	}
	return nil
}

// cniConfig is the bridge network of a node's pods: host-local hands out
// an address from each of podCIDRs (the node's ranges, IPv4 first, so a
// pod's primary IP is its IPv4 one) and routes each family's default
// through the bridge, the node's gateway address on it.
func cniConfig(podCIDRs []string, ipamDir string) string {
	var ranges, routes []string
	for _, c := range podCIDRs {
		ranges = append(ranges, fmt.Sprintf(`[{"subnet": %q}]`, c))
		dst := "0.0.0.0/0"
		if p, err := netip.ParsePrefix(c); err == nil && p.Addr().Is6() {
			dst = "::/0"
		}
		routes = append(routes, fmt.Sprintf(`{"dst": %q}`, dst))
	}
	return fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "isthmus-test",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [%s], "routes": [%s], "dataDir": %q}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`, strings.Join(ranges, ", "), strings.Join(routes, ", "), ipamDir)
}

// startHolder starts a namespace holder (unshare ... sleep infinity) and
// returns its PID once it is in its new namespaces: when it has exec'd
// sleep.
func startHolder(ctx context.Context, p *process) (int, error) {
	if err := p.start(); err != nil {
		return 0, err
	}
	p.mu.Lock()
	pid := p.cmd.Process.Pid
	p.mu.Unlock()
	sleep := resolve("sleep")
	return pid, waitFor(ctx, 10*time.Millisecond, []*process{p}, func(context.Context) error {
		if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); exe != sleep {
			return fmt.Errorf("namespace holder is %q, not yet %s", exe, sleep)
		}
		return nil
	})
}
