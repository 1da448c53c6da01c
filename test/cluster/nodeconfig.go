package cluster

import (
	"context"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// newRealNode writes a member's node configuration (containerd, kubelet,
// kube-proxy, their identities) and prepares, without starting, its
// processes. apiHost is the apiserver as the node reaches it: the relay on
// the node's own IP.
func (c *Cluster) newRealNode(cs *Clusterset, spec clusterSpec, apiHost string, images []string) (*realNode, error) {
	n := &realNode{
		name:    c.Name + "-node",
		ip:      nodeIP(spec.index),
		ips:     nodeIPs(spec),
		dir:     filepath.Join(c.Dir, "node"),
		cgroup:  "/" + filepath.Base(cs.Dir) + "-" + c.Name,
		cluster: c,
		bins:    cs.bins,
		images:  images,
	}
	if err := os.MkdirAll(n.path("etc"), 0o755); err != nil {
		return nil, err
	}
	kubeconfig := func(file, user string, groups ...string) (string, error) {
		cfg, err := c.ca.restConfig(apiHost, user, groups...)
		if err != nil {
			return "", err
		}
		path := n.path("etc", file)
		return path, writeKubeconfig(path, []namedConfig{{c.Name, cfg}})
	}
	kubeletConfig, err := kubeconfig("kubelet.kubeconfig", "system:node:"+n.name, "system:nodes")
	if err != nil {
		return nil, err
	}
	proxyConfig, err := kubeconfig("kube-proxy.kubeconfig", "system:kube-proxy")
	if err != nil {
		return nil, err
	}
	files := map[string]string{
		"containerd.toml": containerdConfig(n),
		"kubelet.yaml":    kubeletConfigFile(n, filepath.Join(c.Dir, "ca.crt")),
	}
	for name, content := range files {
		if err := os.WriteFile(n.path("etc", name), []byte(content), 0o644); err != nil {
			return nil, err
		}
	}
	n.holder = &process{
		name: c.Name + "/node-namespaces",
		bin:  "unshare",
		args: []string{"--net", "--mount", "--propagation", "private", "--", "sleep", "infinity"},
		exe:  resolve("sleep"),
		// logPath set below with the others.
	}
	n.containerd = n.inNode(&process{
		name: c.Name + "/containerd",
		bin:  "containerd",
		args: []string{"--config", n.path("etc", "containerd.toml")},
	})
	labels := []string{"kubernetes.io/os=linux"}
	if spec.locality.Region != "" {
		labels = append(labels, "topology.kubernetes.io/region="+spec.locality.Region)
	}
	if spec.locality.Zone != "" {
		labels = append(labels, "topology.kubernetes.io/zone="+spec.locality.Zone)
	}
	n.kubelet = n.inNode(&process{
		name: c.Name + "/kubelet",
		bin:  cs.bins.kubelet,
		args: []string{
			"--config=" + n.path("etc", "kubelet.yaml"),
			"--kubeconfig=" + kubeletConfig,
			"--root-dir=" + n.path("kubelet"),
			"--cert-dir=" + n.path("kubelet", "pki"),
			"--hostname-override=" + n.name,
			"--node-ip=" + flagList(n.ips),
			"--node-labels=" + strings.Join(labels, ","),
			"--v=2",
		},
	})
	n.proxy = n.inNode(&process{
		name: c.Name + "/kube-proxy",
		bin:  cs.bins.proxy,
		args: []string{
			"--kubeconfig=" + proxyConfig,
			"--proxy-mode=nftables",
			"--hostname-override=" + n.name,
			// Both families' pod ranges make it dual-stack: an nftables
			// table of each family (ip and ip6 kube-proxy).
			"--cluster-cidr=" + flagList(cidrs(spec.podCIDR, spec.podCIDR6)),
			"--conntrack-max-per-core=0",
			"--metrics-bind-address=127.0.0.1:10249",
			"--healthz-bind-address=127.0.0.1:10256",
			"--v=1",
		},
	})
	for _, p := range []*process{n.holder, n.containerd, n.kubelet, n.proxy} {
		p.logPath = filepath.Join(c.Dir, strings.TrimPrefix(p.name, c.Name+"/")+".log")
		p.reg = cs.reg
	}
	return n, nil
}

// nodeIP is member i's node address on the underlay, 10.200.<i>.10: the
// address KWOK gives its node too.
// underlayGateway is the underlay bridge's own address, where the
// harness serves the broker to every member's node and pods
// (Clusterset.BrokerServer).
var underlayGateway = netip.AddrFrom4([4]byte{10, 200, 0, 1})

func nodeIP(index int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, 200, byte(index), 10})
}

// underlay6 is the underlay's IPv6 subnet (ULA): a dual-stack member's
// node has fd00:200::<i>:10 in it besides its IPv4 address, so that the
// kubelet reports an InternalIP of each family and kube-proxy serves both.
var underlay6 = netip.MustParsePrefix("fd00:200::/64")

// nodeIPs are a member's node addresses, IPv4 first: the IPv4 one alone
// unless the member is dual-stack.
func nodeIPs(spec clusterSpec) []netip.Addr {
	ips := []netip.Addr{nodeIP(spec.index)}
	if spec.podCIDR6.IsValid() {
		ips = append(ips, netip.MustParseAddr(fmt.Sprintf("fd00:200::%x:10", spec.index)))
	}
	return ips
}

// egressConfig sends the apiserver's traffic to the cluster (kubelets,
// pods, Services) through the node's CONNECT proxy.
func egressConfig(socket string) string {
	return fmt.Sprintf(`apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:
    proxyProtocol: HTTPConnect
    transport:
      uds:
        udsName: %s
`, socket)
}

// containerdConfig is containerd 1.6's configuration for a node: state
// under the node's directory, the locally built pause image, and
// restrict_oom_score_adj, without which runc fails every sandbox on a host
// whose root lacks CAP_SYS_RESOURCE (it may not lower oom_score_adj).
func containerdConfig(n *realNode) string {
	return fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = %[3]q
[ttrpc]
  address = "%[3]s.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = %[4]q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[5]q
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  tolerate_missing_hugetlb_controller = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[6]q
    conf_dir = %[7]q
`, n.path("lib", "containerd"), n.path("state", "containerd"), n.socket(), n.path("opt"), pauseImage, cniDir, n.path("etc", "cni", "net.d"))
}

// kubeletConfigFile is the kubelet's configuration: pods' resolv.conf
// naming the cluster DNS Service's address (whoever installs a DNS there),
// cgroupfs under the node's own cgroupRoot (no systemd here; cgroup v1, which 1.37 refuses
// unless told), no OOM score below 0 (see containerdConfig), webhook
// authentication and authorization, and thresholds a shared test machine
// never trips.
func kubeletConfigFile(n *realNode, clientCA string) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: %[1]s
containerRuntimeEndpoint: unix://%[2]s
failSwapOn: false
address: %[3]s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %[4]s}
authorization: {mode: Webhook}
clusterDomain: cluster.local
clusterDNS: [%[7]s]
resolvConf: ""
podLogsDirectory: %[5]s
volumePluginDir: %[6]s
evictionHard: {memory.available: 100Mi, nodefs.available: 1%%, imagefs.available: 1%%, nodefs.inodesFree: 1%%, imagefs.inodesFree: 1%%}
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
maxPods: 40
serializeImagePulls: false
rotateCertificates: false
oomScoreAdj: 0
syncFrequency: 10s
fileCheckFrequency: 5s
nodeStatusUpdateFrequency: 5s
`, n.cgroup, n.socket(), n.ip, clientCA, n.path("log", "pods"), n.path("volume-plugins"), n.cluster.DNSServiceIP)
}

// prepareRealNode sets the member up for a real node: the apiserver
// advertises the node's IP (the relay there is the kubernetes Service's
// endpoint), reaches kubelets and pods through the node's egress proxy
// with a client certificate the kubelets accept, and admits what nodes
// and the chart's tunnel pod need.
func (c *Cluster) prepareRealNode(cs *Clusterset, spec clusterSpec, apiPort int) error {
	ip := nodeIP(spec.index)
	n, err := c.newRealNode(cs, spec, "https://"+netip.AddrPortFrom(ip, uint16(apiPort)).String(), spec.images)
	if err != nil {
		return err
	}
	c.node, c.Node = n, n.name
	if err := recordCgroup(cs.Dir, n.cgroup); err != nil {
		return err
	}
	cert, key, err := c.ca.issue("kube-apiserver-kubelet-client", []string{"system:masters"}, nil)
	if err != nil {
		return err
	}
	certFile, keyFile := filepath.Join(c.Dir, "kubelet-client.crt"), filepath.Join(c.Dir, "kubelet-client.key")
	egress := filepath.Join(c.Dir, "egress-selector.yaml")
	for file, data := range map[string][]byte{certFile: cert, keyFile: key, egress: []byte(egressConfig(n.path("egress.sock")))} {
		if err := os.WriteFile(file, data, 0o600); err != nil {
			return err
		}
	}
	args := c.apiserver.args[:0:0]
	for _, a := range c.apiserver.args {
		switch {
		case a == "--endpoint-reconciler-type=none":
			continue // the node IP is not loopback: the reconciler publishes it
		case strings.HasPrefix(a, "--advertise-address="):
			a = "--advertise-address=" + ip.String()
		}
		args = append(args, a)
	}
	c.apiserver.args = append(args,
		"--kubelet-client-certificate="+certFile,
		"--kubelet-client-key="+keyFile,
		"--kubelet-preferred-address-types=InternalIP",
		"--egress-selector-config-file="+egress,
		"--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=true",
	)
	return nil
}

// apiPort is the port the cluster's apiserver listens on.
func (c *Cluster) apiPort() int {
	u, _ := url.Parse(c.Config.Host)
	port, _ := strconv.Atoi(u.Port())
	return port
}

// NodeCommand returns a command run on the member's real node: in its
// network and mount namespaces (paths must be absolute). It is nil for a
// KWOK member.
func (c *Cluster) NodeCommand(ctx context.Context, args ...string) *exec.Cmd {
	if c.node == nil {
		return nil
	}
	return c.node.nsenter(ctx, args...)
}

// ImportImage imports an image archive into the member's real node, where
// pods find it without pulling.
func (c *Cluster) ImportImage(ctx context.Context, archive string) error {
	if c.node == nil {
		return fmt.Errorf("%s has no real node", c.Name)
	}
	return c.node.ImportImage(ctx, archive)
}

// recordCgroup notes a node's cgroup in the harness directory, for the
// sweep of a harness whose test binary died.
func recordCgroup(dir, cgroup string) error {
	f, err := os.OpenFile(filepath.Join(dir, cgroupsFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = fmt.Fprintln(f, cgroup)
	return err
}
