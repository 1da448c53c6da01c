package cluster

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/isthmus-dev/isthmus/test/freeport"
)

// Cluster is one simulated cluster: the broker hub or a member.
type Cluster struct {
	// Name is "broker" or "member<i>".
	Name string
	// PodCIDR is the member's pod range (invalid for the broker); the KWOK
	// node gets a /24 of it and its pods their IPs from that.
	PodCIDR netip.Prefix
	// ServiceCIDR is the cluster's Service range.
	ServiceCIDR netip.Prefix
	// PodCIDRs and ServiceCIDRs are every family's ranges, IPv4 first:
	// PodCIDR and ServiceCIDR alone unless Options.DualStack says otherwise.
	PodCIDRs, ServiceCIDRs []netip.Prefix
	// Locality is the member node's region and zone.
	Locality Locality
	// Dir holds the cluster's certificates, kubeconfigs and logs.
	Dir string
	// Kubeconfig is an admin (system:masters) kubeconfig file.
	Kubeconfig string
	// Config is the admin client configuration.
	Config *rest.Config
	// Client is an admin clientset.
	Client kubernetes.Interface
	// Node is the name of the member's node: NodeName for KWOK's, or
	// "<name>-node" for a real one (Options.RealNodes).
	Node string
	// NodeIP is the member's node address, 10.200.<i>.10; a real node has
	// it on the underlay.
	NodeIP netip.Addr
	// NodeIPs are the node's addresses, NodeIP first: a dual-stack member's
	// real node also has fd00:200::<i>:10 on the underlay (KWOK's node
	// has NodeIP alone).
	NodeIPs []netip.Addr
	// DNSServiceIP is the tenth address of the service range, the cluster
	// DNS a real node's kubelet writes into pods' resolv.conf. Nothing
	// answers there until a test installs a DNS server with a Service at
	// this ClusterIP (kube-system/kube-dns, by custom).
	DNSServiceIP netip.Addr

	ca          *ca
	apiserver   *process
	controllers []*process // kube-controller-manager, kube-scheduler, and kwok unless node is set
	member      bool
	node        *realNode // nil unless Options.RealNodes
}

// NodeName is the name of the KWOK node in every member.
const NodeName = "kwok-node-0"

type clusterSpec struct {
	member      bool
	index       int
	podCIDR     netip.Prefix
	serviceCIDR netip.Prefix
	// podCIDR6 and serviceCIDR6 are valid in a dual-stack member.
	podCIDR6, serviceCIDR6 netip.Prefix
	locality               Locality
	realNode               bool
	images                 []string // archives a real node imports
	// onUnderlay: the broker's serving certificate names the underlay
	// gateway too, where the real nodes reach it.
	onUnderlay bool
	// profiling serves the apiserver's /debug/pprof.
	profiling bool
}

// cidrs are a spec's valid ranges, IPv4 first.
func cidrs(v4, v6 netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range []netip.Prefix{v4, v6} {
		if p.IsValid() {
			out = append(out, p)
		}
	}
	return out
}

// nodeCIDRMask is the controller manager's node mask flag: a /24 of IPv4
// and, in a dual-stack member, a /64 of IPv6 (the IPv4 /24 is then the
// default: the per-family flags are refused in a single-stack member and
// the plain one in a dual-stack member).
func nodeCIDRMask(families int) string {
	if families > 1 {
		return "--node-cidr-mask-size-ipv6=64"
	}
	return "--node-cidr-mask-size=24"
}

// flagList is ranges or addresses as a flag takes them, comma-separated.
func flagList[T fmt.Stringer](xs []T) string {
	var s []string
	for _, x := range xs {
		s = append(s, x.String())
	}
	return strings.Join(s, ",")
}

// newCluster writes a cluster's certificates and kubeconfigs and prepares
// (without starting) its processes.
func (cs *Clusterset) newCluster(name string, spec clusterSpec, bins binaries, db *etcd) (*Cluster, error) {
	dir := filepath.Join(cs.Dir, name)
	if err := os.MkdirAll(filepath.Join(dir, "apiserver-certs"), 0o700); err != nil {
		return nil, err
	}
	authority, err := newCA(name)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if err := authority.write(dir); err != nil {
		return nil, fmt.Errorf("%s: writing CA: %w", name, err)
	}
	hosts := []string{"127.0.0.1", "localhost"}
	if spec.realNode {
		// Pods and the node reach the apiserver by the kubernetes
		// Service's ClusterIP and names, through the relay on the node IP.
		first := spec.serviceCIDR.Addr().Next()
		hosts = append(hosts, nodeIP(spec.index).String(), first.String(),
			"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local")
	}
	if spec.onUnderlay {
		hosts = append(hosts, underlayGateway.String())
	}
	servingCert, servingKey, err := authority.issue("kube-apiserver", nil, hosts)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "serving.crt"), servingCert, 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "serving.key"), servingKey, 0o600); err != nil {
		return nil, err
	}
	if err := writeServiceAccountKeys(dir); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	apiPort, err := freeport.Take()
	if err != nil {
		return nil, err
	}
	host := "https://127.0.0.1:" + strconv.Itoa(apiPort)
	admin, err := authority.restConfig(host, "admin", "system:masters")
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	client, err := kubernetes.NewForConfig(admin)
	if err != nil {
		return nil, fmt.Errorf("%s: admin client: %w", name, err)
	}
	c := &Cluster{
		Name:         name,
		PodCIDR:      spec.podCIDR,
		ServiceCIDR:  spec.serviceCIDR,
		PodCIDRs:     cidrs(spec.podCIDR, spec.podCIDR6),
		ServiceCIDRs: cidrs(spec.serviceCIDR, spec.serviceCIDR6),
		Locality:     spec.locality,
		Dir:          dir,
		Kubeconfig:   filepath.Join(dir, "admin.kubeconfig"),
		Config:       admin,
		Client:       client,
		ca:           authority,
		member:       spec.member,
	}
	if spec.member {
		c.Node, c.NodeIP = NodeName, nodeIP(spec.index)
		c.NodeIPs = []netip.Addr{c.NodeIP}
		if spec.realNode {
			c.NodeIPs = nodeIPs(spec)
		}
		c.DNSServiceIP = spec.serviceCIDR.Addr()
		for range 10 {
			c.DNSServiceIP = c.DNSServiceIP.Next()
		}
	}
	if err := writeKubeconfig(c.Kubeconfig, []namedConfig{{name, admin}}); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	prefix := "/" + name
	if db.prefixUsed[prefix] {
		return nil, fmt.Errorf("%s: etcd prefix %s used twice", name, prefix)
	}
	db.prefixUsed[prefix] = true
	c.apiserver = &process{
		name: name + "/kube-apiserver",
		bin:  bins.apiserver,
		args: []string{
			"--etcd-servers=" + db.clientURL,
			"--etcd-prefix=" + prefix,
			"--bind-address=127.0.0.1",
			"--advertise-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(apiPort),
			// A loopback advertise address needs this: the endpoint
			// reconciler refuses loopback IPs for the kubernetes Service.
			"--endpoint-reconciler-type=none",
			"--cert-dir=" + filepath.Join(dir, "apiserver-certs"),
			"--tls-cert-file=" + filepath.Join(dir, "serving.crt"),
			"--tls-private-key-file=" + filepath.Join(dir, "serving.key"),
			"--client-ca-file=" + filepath.Join(dir, "ca.crt"),
			"--service-account-issuer=https://" + name + ".clusterset.test",
			"--service-account-key-file=" + filepath.Join(dir, "sa.pub"),
			"--service-account-signing-key-file=" + filepath.Join(dir, "sa.key"),
			"--authorization-mode=Node,RBAC",
			"--service-cluster-ip-range=" + flagList(c.ServiceCIDRs),
			"--profiling=" + strconv.FormatBool(spec.profiling),
		},
		logPath: filepath.Join(dir, "kube-apiserver.log"),
		reg:     cs.reg,
	}
	if spec.realNode {
		if err := c.prepareRealNode(cs, spec, apiPort); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
	}
	if spec.member {
		if err := c.prepareControllers(spec, bins, host); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// kwokOptionsYAML is KWOK's configuration beside its stages. A
// configuration file's options are not defaulted one by one, so it
// states KWOK's defaults for those it does not change.
const kwokOptionsYAML = `apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options:
  podPlayStageParallelism: 1
  nodePlayStageParallelism: 4
  nodeLeaseParallelism: 4
  podsOnNodeSyncParallelism: 4
  cidr: 10.0.0.1/24
  enableDebuggingHandlers: true
  enableProfilingHandler: true
`

// prepareControllers writes the identities of a member's controllers and
// prepares kube-controller-manager, kube-scheduler and KWOK.
func (c *Cluster) prepareControllers(spec clusterSpec, bins binaries, host string) error {
	kubeconfig := func(file, user string, groups ...string) (string, error) {
		cfg, err := c.ca.restConfig(host, user, groups...)
		if err != nil {
			return "", err
		}
		path := filepath.Join(c.Dir, file)
		return path, writeKubeconfig(path, []namedConfig{{c.Name, cfg}})
	}
	kcmConfig, err := kubeconfig("controller-manager.kubeconfig", "system:kube-controller-manager")
	if err != nil {
		return fmt.Errorf("%s: %w", c.Name, err)
	}
	schedConfig, err := kubeconfig("scheduler.kubeconfig", "system:kube-scheduler")
	if err != nil {
		return fmt.Errorf("%s: %w", c.Name, err)
	}
	// KWOK plays one pod's stage at a time. With its default of four, the
	// first pods of a node render their IPs at once, and KWOK v0.8.0 makes
	// the node's IP pool without a lock: two workers may each make one and
	// hand out the same first address (a Deployment's first three pods ran
	// on two IPs, TestClustersetRunsWorkloads in a CI run of 2026-12-07).
	kwokOptions := filepath.Join(c.Dir, "kwok-options.yaml")
	if err := os.WriteFile(kwokOptions, []byte(kwokOptionsYAML), 0o600); err != nil {
		return err
	}
	var kcmPort, schedPort, kwokPort int
	for _, p := range []*int{&kcmPort, &schedPort, &kwokPort} {
		if *p, err = freeport.Take(); err != nil {
			return err
		}
	}
	for _, d := range []string{"controller-manager-certs", "flexvolume", "scheduler-certs"} {
		if err := os.MkdirAll(filepath.Join(c.Dir, d), 0o700); err != nil {
			return err
		}
	}
	nodeIP := netip.AddrFrom4([4]byte{10, 200, byte(spec.index), 10})
	c.controllers = []*process{
		{
			name: c.Name + "/kube-controller-manager",
			bin:  bins.controllerManager,
			args: []string{
				"--kubeconfig=" + kcmConfig,
				"--authentication-kubeconfig=" + kcmConfig,
				"--authorization-kubeconfig=" + kcmConfig,
				"--bind-address=127.0.0.1",
				"--secure-port=" + strconv.Itoa(kcmPort),
				"--cert-dir=" + filepath.Join(c.Dir, "controller-manager-certs"),
				"--leader-elect=false",
				"--controllers=*",
				// Each controller acts with its own service account, as in
				// a real cluster, so RBAC denials show up in tests.
				"--use-service-account-credentials=true",
				"--service-account-private-key-file=" + filepath.Join(c.Dir, "sa.key"),
				"--root-ca-file=" + filepath.Join(c.Dir, "ca.crt"),
				"--allocate-node-cidrs=true",
				"--cluster-cidr=" + flagList(c.PodCIDRs),
				nodeCIDRMask(len(c.PodCIDRs)),
				"--service-cluster-ip-range=" + flagList(c.ServiceCIDRs),
				"--cluster-name=" + c.Name,
				// Without it the controller manager creates the kubelet's
				// default Flexvolume directory on the host.
				"--flex-volume-plugin-dir=" + filepath.Join(c.Dir, "flexvolume"),
				"--profiling=false",
			},
			logPath: filepath.Join(c.Dir, "kube-controller-manager.log"),
		},
		{
			name: c.Name + "/kube-scheduler",
			bin:  bins.scheduler,
			args: []string{
				"--kubeconfig=" + schedConfig,
				"--authentication-kubeconfig=" + schedConfig,
				"--authorization-kubeconfig=" + schedConfig,
				"--bind-address=127.0.0.1",
				"--secure-port=" + strconv.Itoa(schedPort),
				"--cert-dir=" + filepath.Join(c.Dir, "scheduler-certs"),
				"--leader-elect=false",
				"--profiling=false",
			},
			logPath: filepath.Join(c.Dir, "kube-scheduler.log"),
		},
		{
			name: c.Name + "/kwok",
			bin:  bins.kwok,
			args: []string{
				"--kubeconfig=" + c.Kubeconfig,
				"--config=" + bins.kwokStages,
				"--config=" + kwokOptions,
				"--manage-all-nodes=false",
				"--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
				"--server-address=127.0.0.1:" + strconv.Itoa(kwokPort),
				"--node-ip=" + nodeIP.String(),
				// Without a node Lease the only heartbeat is the status
				// patch of the heartbeat stage, about once a minute, which
				// outlasts the controller manager's grace period: the node
				// would go NotReady now and then, and its pods with it.
				"--node-lease-duration-seconds=40",
			},
			logPath: filepath.Join(c.Dir, "kwok.log"),
		},
	}
	if c.node != nil {
		c.controllers = c.controllers[:2] // the real node replaces KWOK
	}
	for _, p := range c.controllers {
		p.reg = c.apiserver.reg
	}
	return nil
}

// start starts the cluster's apiserver and, once it is ready, a member's
// controllers and node, and waits until the member can run pods.
func (c *Cluster) start(ctx context.Context, underlayPID int) error {
	if c.node != nil {
		if err := c.node.prepare(ctx, underlayPID, c.apiPort()); err != nil {
			return err
		}
	}
	if err := c.StartAPIServer(ctx); err != nil {
		return err
	}
	if !c.member {
		return nil
	}
	// The controller manager acting as system:kube-controller-manager exits
	// when RBAC bootstrap has not finished, so it starts after /readyz.
	for _, p := range c.controllers {
		if err := p.start(); err != nil {
			return err
		}
	}
	if c.node != nil {
		return c.node.startDaemons(ctx)
	}
	if err := c.createNode(ctx); err != nil {
		return err
	}
	kcm, kwok := c.controllers[0], c.controllers[2]
	return waitFor(ctx, 200*time.Millisecond, []*process{kwok, kcm}, func(ctx context.Context) error {
		node, err := c.Client.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if len(node.Spec.PodCIDRs) < len(c.PodCIDRs) {
			return fmt.Errorf("node has pod CIDRs %v yet, want one in each of %v", node.Spec.PodCIDRs, c.PodCIDRs)
		}
		if !nodeReady(node) {
			return errors.New("node not Ready yet")
		}
		_, err = c.Client.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{})
		return err
	})
}

func (c *Cluster) createNode(ctx context.Context) error {
	labels := map[string]string{
		"kubernetes.io/hostname": NodeName,
		"kubernetes.io/os":       "linux",
		"kubernetes.io/arch":     "amd64",
		"type":                   "kwok",
	}
	if c.Locality.Region != "" {
		labels[corev1.LabelTopologyRegion] = c.Locality.Region
	}
	if c.Locality.Zone != "" {
		labels[corev1.LabelTopologyZone] = c.Locality.Zone
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name:   NodeName,
		Labels: labels,
		Annotations: map[string]string{
			"kwok.x-k8s.io/node":           "fake",
			"node.alpha.kubernetes.io/ttl": "0",
		},
	}}
	_, err := c.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("%s: creating node %s: %w", c.Name, NodeName, err)
	}
	return nil
}

func nodeReady(n *corev1.Node) bool {
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// StartAPIServer starts the cluster's kube-apiserver (again, after
// StopAPIServer) on the same port and data, and waits for /readyz.
func (c *Cluster) StartAPIServer(ctx context.Context) error {
	if err := c.apiserver.start(); err != nil {
		return err
	}
	return waitFor(ctx, 100*time.Millisecond, []*process{c.apiserver}, func(ctx context.Context) error {
		return c.Client.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).Error()
	})
}

// StopAPIServer stops the cluster's kube-apiserver, as in a control-plane
// outage; its data stays in etcd and its controllers keep retrying. A
// member's apiserver, drained by its controllers' watches, can take over
// 15 s to shut down gracefully; it gets 5 s and is then killed, which is
// an outage all the same.
func (c *Cluster) StopAPIServer() {
	c.apiserver.stop(5 * time.Second)
}

// RestartAPIServer stops and starts the cluster's kube-apiserver.
func (c *Cluster) RestartAPIServer(ctx context.Context) error {
	c.StopAPIServer()
	return c.StartAPIServer(ctx)
}

// ConfigFor returns a client configuration that authenticates to the
// cluster as user in groups, with a client certificate from its CA.
func (c *Cluster) ConfigFor(user string, groups ...string) (*rest.Config, error) {
	return c.ca.restConfig(c.Config.Host, user, groups...)
}

// WriteKubeconfig writes a kubeconfig file at path that authenticates to
// the cluster as user in groups, for a process the harness does not start
// (kube-proxy on a demo node, say).
func (c *Cluster) WriteKubeconfig(path, user string, groups ...string) error {
	cfg, err := c.ConfigFor(user, groups...)
	if err != nil {
		return err
	}
	return writeKubeconfig(path, []namedConfig{{c.Name, cfg}})
}
