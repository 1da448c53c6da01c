package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"
)

// Options say what clusterset to start.
type Options struct {
	// Members is the number of member clusters, at most 15. Member i (from
	// 1) is named "member<i>", has pod CIDR 10.(240+i).0.0/16 and service
	// CIDR 10.(96+i).0.0/16.
	Members int
	// Broker starts a hub cluster named "broker": a kube-apiserver alone,
	// on an etcd of its own so a test can stop it independently.
	Broker bool
	// Localities sets the region and zone of member i+1's node; members
	// beyond the slice get none.
	Localities []Locality
	// DualStack[i] gives member i+1 IPv6 ranges besides its IPv4 ones,
	// IPv4 first: pod CIDR fd00:244:<i>::/56 (a /64 for the node, so pods
	// get an address of each family) and service CIDR fd00:96:<i>::/112.
	// Members beyond the slice are IPv4 only, so a clusterset can mix both.
	// A dual-stack real node also has an IPv6 address on the underlay,
	// fd00:200::<i>:10, and the kubelet reports both; its pods get an
	// address of each family from the bridge and kube-proxy serves both
	// families' ClusterIPs.
	DualStack []bool
	// BinDir holds the binaries built by test/tools. Empty means the
	// ISTHMUS_TOOLS_DIR environment variable, else the directory
	// test/tools/build.sh reports for an existing build.
	BinDir string
	// WorkDir is where the harness makes its directory. Empty means
	// os.TempDir().
	WorkDir string
	// StartTimeout bounds the whole start. Zero means 4 minutes.
	StartTimeout time.Duration
	// Log receives the harness's progress. Nil means discard.
	Log *slog.Logger
	// RealNodes gives each member a real node in place of KWOK's: a
	// kubelet, containerd, runc and the CNI bridge in a network and mount
	// namespace of its own, with kube-proxy, on an underlay bridge that
	// joins the members' nodes (and routes no pod range between them).
	// Pods run for real, from images imported at start: the harness's
	// pause and TestServerImage, and Images. It needs root, cgroup v1 and
	// Debian's containerd, runc and CNI plugins; New says what is missing.
	RealNodes bool
	// CoreDNS builds CoreDNSImage (CoreDNS with the isthmus plugin) and
	// imports it into every real node, for Cluster.InstallCoreDNS.
	CoreDNS bool
	// Images are image archives (docker-archive or OCI layout, such as
	// bin/isthmus-image.tar) imported into every real node at start.
	Images []string
	// Profiling serves every kube-apiserver's /debug/pprof (to admins
	// only), for a benchmark that looks for where an apiserver's CPU goes.
	Profiling bool
	// BeforeStop, if set, runs when Stop begins, before any process ends:
	// a test binary stops what it runs against the clusterset there.
	BeforeStop func()
}

// Locality is a member node's topology.kubernetes.io region and zone.
type Locality struct {
	Region, Zone string
}

// Clusterset is a running set of simulated clusters.
type Clusterset struct {
	// Broker is the hub cluster, nil unless Options.Broker.
	Broker *Cluster
	// Members are the member clusters, member1 first.
	Members []*Cluster
	// Dir holds every file of the harness; Stop removes it.
	Dir string
	// Kubeconfig is a kubeconfig file with an admin context per cluster,
	// named as the clusters are.
	Kubeconfig string
	// StartDuration is how long the start took, up to every member ready.
	StartDuration time.Duration
	// BrokerServer is the broker's API address as real nodes and their
	// pods reach it, https://10.200.0.1:<port> on the underlay (give it
	// to isthmusctl join --broker-server); empty unless Options.Broker
	// and Options.RealNodes.
	BrokerServer string

	log        *slog.Logger
	bins       binaries
	beforeStop func()
	etcds      []*process
	underlay   *process // holds the namespace of the real nodes' bridge
	stops      []func() // relays to end once the nodes are gone
	reg        *pidRegistry
	stopOnce   sync.Once
	timersMu   sync.Mutex
	timers     []*time.Timer // deadline guards, disarmed by Stop
}

const maxMembers = 15

// New starts a clusterset and returns once every cluster is ready: each
// apiserver answers /readyz, and each member has a Ready node with a pod
// CIDR and the default ServiceAccount, so Deployments run at once. On error
// everything started is stopped and removed again.
func New(ctx context.Context, opts Options) (_ *Clusterset, err error) {
	began := time.Now()
	if opts.Members < 0 || opts.Members > maxMembers {
		return nil, fmt.Errorf("members: %d is not between 0 and %d", opts.Members, maxMembers)
	}
	if opts.Members == 0 && !opts.Broker {
		return nil, errors.New("nothing to start: no members and no broker")
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 4 * time.Minute
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	bins, err := findBinaries(opts.BinDir)
	if err != nil {
		return nil, err
	}
	parent := opts.WorkDir
	if parent == "" {
		parent = os.TempDir()
	}
	sweepStale(parent)
	dir, err := os.MkdirTemp(parent, dirPrefix)
	if err != nil {
		return nil, fmt.Errorf("making harness directory: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("writing harness owner: %w", err)
	}
	cs := &Clusterset{
		Dir:        dir,
		Kubeconfig: filepath.Join(dir, "kubeconfig"),
		log:        log,
		bins:       bins,
		beforeStop: opts.BeforeStop,
		reg:        &pidRegistry{path: filepath.Join(dir, childrenFile), pids: map[int]string{}},
	}
	defer func() {
		if err != nil {
			cs.Stop()
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, opts.StartTimeout)
	defer cancel()

	var images []string
	if opts.RealNodes {
		if err := checkNodeHost(bins.kubelet); err != nil {
			return nil, err
		}
		if images, err = cs.startUnderlay(ctx, opts.CoreDNS); err != nil {
			return nil, err
		}
		images = append(images, opts.Images...)
	}

	var brokerEtcd, memberEtcd *etcd
	if opts.Broker {
		if brokerEtcd, err = cs.newEtcd("etcd-broker", bins); err != nil {
			return nil, err
		}
		if cs.Broker, err = cs.newCluster("broker", clusterSpec{
			serviceCIDR: netip.MustParsePrefix("10.96.0.0/16"),
			onUnderlay:  opts.RealNodes,
			profiling:   opts.Profiling,
		}, bins, brokerEtcd); err != nil {
			return nil, err
		}
		if opts.RealNodes {
			if err := cs.serveBrokerOnUnderlay(); err != nil {
				return nil, err
			}
		}
	}
	if opts.Members > 0 {
		if memberEtcd, err = cs.newEtcd("etcd-members", bins); err != nil {
			return nil, err
		}
	}
	for i := 1; i <= opts.Members; i++ {
		spec := clusterSpec{
			member:      true,
			index:       i,
			podCIDR:     netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(240 + i), 0, 0}), 16),
			serviceCIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(96 + i), 0, 0}), 16),
			realNode:    opts.RealNodes,
			profiling:   opts.Profiling,
			images:      images,
		}
		if i <= len(opts.DualStack) && opts.DualStack[i-1] {
			spec.podCIDR6 = netip.MustParsePrefix(fmt.Sprintf("fd00:244:%x::/56", i))
			spec.serviceCIDR6 = netip.MustParsePrefix(fmt.Sprintf("fd00:96:%x::/112", i))
		}
		if i <= len(opts.Localities) {
			spec.locality = opts.Localities[i-1]
		}
		c, err := cs.newCluster(fmt.Sprintf("member%d", i), spec, bins, memberEtcd)
		if err != nil {
			return nil, err
		}
		cs.Members = append(cs.Members, c)
	}
	if err := writeKubeconfig(cs.Kubeconfig, cs.adminContexts()); err != nil {
		return nil, fmt.Errorf("writing clusterset kubeconfig: %w", err)
	}

	for _, e := range []*etcd{brokerEtcd, memberEtcd} {
		if e == nil {
			continue
		}
		if err := e.proc.start(); err != nil {
			return nil, err
		}
		cs.etcds = append(cs.etcds, e.proc)
	}
	log.Info("starting clusterset", "dir", dir, "broker", opts.Broker, "members", opts.Members)
	underlayPID := -1
	if cs.underlay != nil {
		underlayPID = cs.underlay.cmd.Process.Pid
	}
	if err := cs.each(func(c *Cluster) error { return c.start(ctx, underlayPID) }); err != nil {
		return nil, err
	}
	// The apiservers answer, but only our own etcds may be behind them: an
	// etcd that could not bind its port exits, and its apiservers store
	// into whatever holds the port (another harness's etcd would, under
	// the same key prefixes).
	for _, e := range cs.etcds {
		if done, err := e.exited(); done {
			return nil, fmt.Errorf("%s exited (%v); the end of its log:\n%s", e.name, err, tail(e.logPath, 20))
		}
	}
	cs.StartDuration = time.Since(began)
	log.Info("clusterset ready", "took", cs.StartDuration.Round(time.Millisecond))
	return cs, nil
}

// Clusters returns the broker (if any) followed by the members.
func (cs *Clusterset) Clusters() []*Cluster {
	var all []*Cluster
	if cs.Broker != nil {
		all = append(all, cs.Broker)
	}
	return append(all, cs.Members...)
}

// KubeProxy is the path of the kube-proxy binary of the tools build, for
// whoever runs a member's node in a network namespace (the harness itself
// starts no kube-proxy).
func (cs *Clusterset) KubeProxy() string { return cs.bins.proxy }

// PIDs returns the process ids of every child the harness runs now.
func (cs *Clusterset) PIDs() []int {
	cs.reg.mu.Lock()
	defer cs.reg.mu.Unlock()
	var pids []int
	for pid := range cs.reg.pids {
		pids = append(pids, pid)
	}
	slices.Sort(pids)
	return pids
}

// Stop ends every process the harness started, members' controllers first,
// then the apiservers, then etcd, and removes the harness's directory. It
// is safe to call more than once and from several goroutines.
func (cs *Clusterset) Stop() {
	cs.timersMu.Lock()
	for _, t := range cs.timers {
		t.Stop()
	}
	cs.timersMu.Unlock()
	cs.stopOnce.Do(func() {
		if cs.beforeStop != nil {
			cs.beforeStop()
		}
		var wg sync.WaitGroup
		stopAll := func(procs []*process) {
			for _, p := range procs {
				wg.Go(func() { p.stop(10 * time.Second) })
			}
			wg.Wait()
		}
		// Real nodes go first, while their apiservers still answer the
		// kubelets' last status updates.
		_ = cs.each(func(c *Cluster) error {
			if c.node != nil {
				if err := c.node.stop(); err != nil {
					cs.log.Warn("stopping node", "node", c.node.name, "err", err)
				}
			}
			return nil
		})
		var controllers, apiservers []*process
		for _, c := range cs.Clusters() {
			controllers = append(controllers, c.controllers...)
			apiservers = append(apiservers, c.apiserver)
		}
		stopAll(controllers)
		stopAll(apiservers)
		stopAll(cs.etcds)
		for _, stop := range cs.stops {
			stop()
		}
		if cs.underlay != nil {
			cs.underlay.stop(time.Second)
		}
		if err := os.RemoveAll(cs.Dir); err != nil {
			cs.log.Warn("removing harness directory", "dir", cs.Dir, "err", err)
		}
		cs.log.Info("clusterset stopped", "dir", cs.Dir)
	})
}

// each runs fn for every cluster at once and joins their errors.
func (cs *Clusterset) each(fn func(*Cluster) error) error {
	clusters := cs.Clusters()
	errs := make([]error, len(clusters))
	var wg sync.WaitGroup
	for i, c := range clusters {
		wg.Go(func() { errs[i] = fn(c) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (cs *Clusterset) adminContexts() []namedConfig {
	var out []namedConfig
	for _, c := range cs.Clusters() {
		out = append(out, namedConfig{name: c.Name, cfg: c.Config})
	}
	return out
}
