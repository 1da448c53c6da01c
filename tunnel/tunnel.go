package tunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/isthmus-dev/isthmus/mcs/api/broker/records"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/election"
)

// FieldManager is the server-side apply field manager that owns the
// tunnel's fields of the cluster record (spec.wireGuard and the Tunnel*
// conditions), so the agent's fields never conflict with them.
const FieldManager = "isthmus-tunnel"

var clusterGVR = brokerv1.ClustersResource

// Config says how to run one cluster's tunnel.
type Config struct {
	ClusterID       string
	BrokerNamespace string
	// Device is the WireGuard interface name; it must be unique on the
	// host, because the userspace device's UAPI socket path is
	// host-global.
	Device         string
	Implementation Implementation
	MTU            int
	ListenPort     int
	// Endpoint is the UDP address other gateways reach this one at, as
	// published in the record.
	Endpoint netip.AddrPort
	// ProbePort is the UDP port of the echo probe on the tunnel address.
	ProbePort int
	// Keepalive is every peer's persistent keepalive. It is never off:
	// with it a restarted or failed-over gateway is back in tens of
	// milliseconds, without it in 15 s or never.
	Keepalive time.Duration
	// Resync is how often the device and routes are checked against the
	// records even when nothing changed, which repairs hand edits.
	Resync time.Duration
	// ProbeInterval is how often each peer is probed.
	ProbeInterval time.Duration
	// StatusInterval is the least time between two writes of the record's
	// status.
	StatusInterval time.Duration
	RouteProtocol  int
	// RouteTable holds the routes to other clusters; a table other than
	// MainTable is consulted by a rule of RulePriority (rule.go).
	RouteTable   int
	RulePriority int
	KeyNamespace string
	KeySecret    string
	// Election, when set, runs the device only while this replica holds
	// the gateway Lease (LeaseName, in KeyNamespace): the replicas share
	// one key, and two active devices with it would make every peer roam
	// back and forth between them.
	Election *Election

	// Broker holds the cluster records; Local holds the key Secret and
	// the gateway Lease.
	Broker dynamic.Interface
	Local  kubernetes.Interface
	Log    *slog.Logger
	// Registry receives the isthmus_tunnel_* metrics.
	Registry prometheus.Registerer
	// KeepDatapath is asked when the tunnel stops because its process is
	// ending (not when it lost its Lease): true leaves the device, its
	// routes and rules to the next tunnel process on this node (a pod
	// restart or upgrade; Device.Keep), false removes them. Nil is false.
	KeepDatapath func(context.Context) bool
}

// Election is how the gateway replicas elect the active one.
type Election struct {
	// Identity names this replica in the Lease.
	Identity string
	// The timings; zero takes mcs/election's defaults.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
}

// Validate reports the first unusable setting. It checks what a command
// line gives, so that bad flags are reported before any apiserver is
// asked; New checks the rest.
func (c Config) Validate() error {
	switch {
	case len(c.Device) == 0 || len(c.Device) > 15:
		return fmt.Errorf("device name %q must have 1 to 15 characters", c.Device)
	case c.MTU < 1280 || c.MTU > 65535:
		return fmt.Errorf("MTU %d out of range 1280-65535", c.MTU)
	case c.ListenPort < 1 || c.ListenPort > 65535:
		return fmt.Errorf("listen port %d out of range", c.ListenPort)
	case !c.Endpoint.IsValid() || c.Endpoint.Addr().IsUnspecified() || c.Endpoint.Port() == 0:
		return fmt.Errorf("endpoint %q must be the ip:port other gateways reach this one at", c.Endpoint)
	case c.ProbePort < 1 || c.ProbePort > 65535:
		return fmt.Errorf("probe port %d out of range", c.ProbePort)
	case c.Keepalive < time.Second:
		return fmt.Errorf("keepalive %s must be at least 1s: it cannot be turned off", c.Keepalive)
	case c.Resync <= 0 || c.ProbeInterval <= 0 || c.StatusInterval <= 0:
		return errors.New("resync, probe and status intervals must be positive")
	case c.RouteProtocol < 5 || c.RouteProtocol > 255:
		return fmt.Errorf("route protocol %d must be 5-255 (0-4 are the kernel's own)", c.RouteProtocol)
	case checkTable(c.RouteTable, c.RulePriority) != nil:
		return checkTable(c.RouteTable, c.RulePriority)
	case c.KeyNamespace == "" || c.KeySecret == "":
		return errors.New("the key Secret's namespace and name are required")
	case c.Election != nil && c.Election.Identity == "":
		return errors.New("leader election needs an identity for this replica")
	}
	return nil
}

// Tunnel runs one cluster's WireGuard gateway.
type Tunnel struct {
	cfg     Config
	broker  dynamic.Interface
	local   kubernetes.Interface
	log     *slog.Logger
	metrics *metrics
	health  healthTable

	mu     sync.Mutex
	dev    *Device
	wg     wgClient
	pub    wgtypes.Key
	keyGen int64
	// peers are the peers on the device and verdicts every remote
	// record's plan, by cluster; passes change single entries.
	peers    map[string]Peer
	verdicts map[string]Verdict
	notReady error

	// Used by the reconcile loop only.
	records recordCache
	plan    planner
	own     ownFacts
	dirty   dirtySet
}

// New returns a tunnel for cfg, its metrics registered.
func New(cfg Config) (*Tunnel, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("tunnel configuration: %w", err)
	}
	switch {
	case cfg.ClusterID == "":
		return nil, errors.New("tunnel configuration: a cluster id is required")
	case cfg.BrokerNamespace == "":
		return nil, errors.New("tunnel configuration: a broker namespace is required")
	case cfg.Broker == nil || cfg.Local == nil || cfg.Log == nil || cfg.Registry == nil:
		return nil, errors.New("tunnel configuration: the broker and local clients, a logger and a registry are required")
	}
	t := &Tunnel{cfg: cfg, broker: cfg.Broker, local: cfg.Local, log: cfg.Log, notReady: errors.New("starting"),
		peers: map[string]Peer{}, verdicts: map[string]Verdict{}}
	t.health.peers = map[string]*peerHealth{}
	t.metrics = newMetrics(t)
	if err := t.register(cfg.Registry); err != nil {
		return nil, fmt.Errorf("registering the tunnel metrics: %w", err)
	}
	return t, nil
}

// Ready reports nil once the device is up and the records have been
// reconciled; it is the /readyz check.
func (t *Tunnel) Ready() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.notReady
}

func (t *Tunnel) setReady(err error) {
	t.mu.Lock()
	t.notReady = err
	t.mu.Unlock()
}

// Run brings the device up, keeps it in step with the broker's records
// until ctx ends, then removes its peers and routes and the device. With
// an Election it does so only while this replica holds the gateway Lease;
// losing the Lease ends it with election.ErrLost.
func (t *Tunnel) Run(ctx context.Context) error {
	e := t.cfg.Election
	if e == nil {
		return t.run(ctx, ctx)
	}
	return election.Run(ctx, election.Config{
		Client: t.local, Namespace: t.cfg.KeyNamespace, Name: LeaseName(t.cfg.ClusterID), Identity: e.Identity,
		LeaseDuration: e.LeaseDuration, RenewDeadline: e.RenewDeadline, RetryPeriod: e.RetryPeriod, Log: t.log,
	}, func(leading context.Context) error { return t.run(leading, ctx) })
}

// keepDatapath says whether a stop hands the data path over: only when
// the process is ending (process is done) and KeepDatapath agrees.
func (t *Tunnel) keepDatapath(process context.Context) bool {
	if process.Err() == nil || t.cfg.KeepDatapath == nil {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return t.cfg.KeepDatapath(ctx)
}

// run is the tunnel while ctx lasts; process is the whole process's
// context, done only when the process is ending.
func (t *Tunnel) run(ctx, process context.Context) (err error) {
	key, err := LoadOrCreateKey(ctx, t.local, t.cfg.KeyNamespace, t.cfg.KeySecret)
	if err != nil {
		return err
	}
	dev, err := OpenDevice(t.cfg.Device, t.cfg.Implementation, t.cfg.MTU, t.log)
	if err != nil {
		return err
	}
	client, err := wgctrl.New()
	if err != nil {
		dev.Close()
		return fmt.Errorf("opening wgctrl: %w", err)
	}
	rec := newReconciler(client, dev.Name, netlink.RouteProtocol(t.cfg.RouteProtocol), t.cfg.RouteTable, t.cfg.Keepalive)
	rec.count = func(op string) { t.metrics.deviceOps.WithLabelValues(op).Inc() }
	defer func() {
		if t.keepDatapath(process) {
			if kerr := dev.Keep(); kerr != nil {
				err = errors.Join(err, fmt.Errorf("keeping %s for the next tunnel: %w", dev.Name, kerr))
			}
			client.Close()
			t.log.Info("tunnel stopped; device, routes and rules kept for the next tunnel on this node", "device", dev.Name)
			return
		}
		// The clean shutdown: peers and routes first, so nothing is left
		// pointing at a device that is going away, then our rules, then the
		// device.
		if cerr := rec.clear(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("removing peers and routes: %w", cerr))
		}
		if cerr := rec.removeRules(t.cfg.RulePriority); cerr != nil {
			err = errors.Join(err, cerr)
		}
		if cerr := dev.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
		client.Close()
		t.log.Info("tunnel stopped; peers and routes removed", "device", dev.Name)
	}()
	port := t.cfg.ListenPort
	if err := client.ConfigureDevice(dev.Name, wgtypes.Config{PrivateKey: &key.Private, ListenPort: &port}); err != nil {
		return fmt.Errorf("configuring key and port of %s: %w", dev.Name, err)
	}
	t.mu.Lock()
	t.dev, t.wg, t.pub, t.keyGen = dev, client, key.Private.PublicKey(), key.Generation
	t.mu.Unlock()
	t.log.Info("WireGuard device up", "device", dev.Name, "implementation", dev.Implementation, "offload", dev.Offload,
		"publicKey", key.Private.PublicKey().String(), "keyGeneration", key.Generation, "listenPort", port)
	if err := t.publishSpec(ctx); err != nil {
		// Not fatal: the broker may be away for a while, and every pass
		// publishes again until the record carries our key.
		t.log.Error("publishing the tunnel's key and endpoint; will retry", "err", err)
	}

	trigger := make(chan struct{}, 1)
	poke := func() {
		select {
		case trigger <- struct{}{}:
		default:
		}
	}
	factory := dynamicinformer.NewFilteredDynamicSharedInformerFactory(t.broker, 0, t.cfg.BrokerNamespace, nil)
	inf := factory.ForResource(clusterGVR).Informer()
	// Each event names its record, so a pass can apply just the records
	// that changed.
	mark := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			_, name, _ := cache.SplitMetaNamespaceKey(key)
			t.dirty.add(name)
			poke()
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    mark,
		UpdateFunc: func(_, obj any) { mark(obj) },
		DeleteFunc: mark,
	}); err != nil {
		return fmt.Errorf("watching cluster records: %w", err)
	}
	infCtx, stopInf := context.WithCancel(ctx)
	defer stopInf()
	go inf.RunWithContext(infCtx)
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return fmt.Errorf("listing cluster records in %s: %w", t.cfg.BrokerNamespace, ctx.Err())
	}

	var echo echoState
	defer echo.stopFn()
	resync := time.NewTicker(t.cfg.Resync)
	defer resync.Stop()
	// Probes run apart from the reconcile loop: a round waits up to a
	// probe timeout for unreachable peers, and record changes must not
	// wait for it.
	pr, err := newProber()
	if err != nil {
		return err
	}
	probing := make(chan struct{})
	go func() {
		defer close(probing)
		defer pr.close()
		probes := time.NewTicker(t.cfg.ProbeInterval)
		defer probes.Stop()
		var status statusWriter
		for {
			select {
			case <-infCtx.Done():
				return
			case <-probes.C:
				t.probeAll(pr)
				status.maybeWrite(infCtx, t)
			}
		}
	}()
	defer func() { stopInf(); <-probing }()
	// A full pass reads every record, the device and the routes; a change
	// pass applies only the records whose events arrived since the last
	// pass. Full passes run at start, on every resync (which repairs hand
	// edits) and after a change pass failed.
	needFull := true
	do := func(full bool) {
		names := t.dirty.take()
		kind := "change"
		if full || needFull {
			kind = "full"
		}
		start := time.Now()
		var err error
		if kind == "full" {
			err = t.fullPass(ctx, rec, inf, &echo)
			t.setReady(err)
			// Change passes build on a full pass that went through.
			needFull = err != nil
		} else {
			var redo bool
			redo, err = t.changePass(ctx, rec, inf.GetStore(), names)
			if redo {
				// This cluster's own CIDRs changed: every peer's plan may
				// have, and the device needs a new address.
				kind = "full"
				err = t.fullPass(ctx, rec, inf, &echo)
				t.setReady(err)
				needFull = err != nil
			} else if err != nil {
				t.setReady(err)
				needFull = true
				time.AfterFunc(time.Second, poke)
			}
		}
		t.metrics.reconcileDuration.WithLabelValues(kind).Observe(time.Since(start).Seconds())
		if err != nil {
			t.log.Error("reconciling the tunnel", "pass", kind, "err", err)
		}
	}
	do(true)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-trigger:
			// Let a burst of record events settle into one pass.
			time.Sleep(100 * time.Millisecond)
			select {
			case <-trigger:
			default:
			}
			do(false)
		case <-resync.C:
			if err := t.followKey(ctx, client, dev.Name); err != nil {
				t.log.Error("following the key Secret", "err", err)
			}
			do(true)
		}
	}
}

// followKey re-reads the key Secret and, when it holds another key (a
// rotation), puts that key on the device and publishes its public half.
// Peers follow through the broker: their next reconcile adds a peer with
// the new key, which takes over the allowed IPs, and removes the old one.
func (t *Tunnel) followKey(ctx context.Context, client wgClient, dev string) error {
	key, err := LoadOrCreateKey(ctx, t.local, t.cfg.KeyNamespace, t.cfg.KeySecret)
	if err != nil {
		return err
	}
	t.mu.Lock()
	old := t.pub
	t.keyGen = key.Generation
	t.mu.Unlock()
	if key.Private.PublicKey() == old {
		return nil
	}
	if err := client.ConfigureDevice(dev, wgtypes.Config{PrivateKey: &key.Private}); err != nil {
		return fmt.Errorf("putting the rotated key on %s: %w", dev, err)
	}
	t.mu.Lock()
	t.pub = key.Private.PublicKey()
	t.mu.Unlock()
	t.log.Info("WireGuard key rotated", "old", old.String(), "new", key.Private.PublicKey().String(), "keyGeneration", key.Generation)
	return t.publishSpec(ctx)
}

// echoState is the running echo server and the address it serves.
type echoState struct {
	addr netip.AddrPort
	stop func()
}

func (e *echoState) ensure(ctx context.Context, addr netip.AddrPort, log *slog.Logger) error {
	if e.addr == addr && e.stop != nil {
		return nil
	}
	if e.stop != nil {
		e.stop()
		e.stop = nil
	}
	stop, err := echoServer(ctx, addr, log)
	if err != nil {
		return err
	}
	e.addr, e.stop = addr, stop
	return nil
}

func (e *echoState) stopFn() {
	if e.stop != nil {
		e.stop()
	}
}

// probeAll sends one echo to every configured peer's tunnel address and
// waits for the round to end.
func (t *Tunnel) probeAll(pr *prober) {
	t.mu.Lock()
	peers := make([]Peer, 0, len(t.peers))
	for _, p := range t.peers {
		peers = append(peers, p)
	}
	t.mu.Unlock()
	targets := make([]netip.AddrPort, len(peers))
	for i, p := range peers {
		targets[i] = netip.AddrPortFrom(p.TunnelAddr, uint16(t.cfg.ProbePort))
	}
	for i, r := range pr.round(targets, min(t.cfg.ProbeInterval, time.Second)) {
		c := peers[i].Cluster
		if r.Err != nil {
			t.metrics.probeFailures.WithLabelValues(c).Inc()
		} else {
			t.metrics.probeRTT.WithLabelValues(c).Observe(r.RTT.Seconds())
		}
		t.health.record(c, r.RTT, r.Err)
	}
}

// PeerStatus is one remote cluster's state as this tunnel sees it.
type PeerStatus struct {
	Cluster string
	// State is one of the State* constants.
	State string
	// Reason is a CamelCase word for State; Message says it for people.
	Reason, Message string
	// Peer is the device's entry, nil when the cluster is not peered.
	Peer *wgtypes.Peer
	// RTT is the last answered probe's round trip.
	RTT time.Duration
}

// Status is a snapshot of the device and every remote cluster's state,
// by cluster name.
func (t *Tunnel) Status() (*Device, []PeerStatus, error) {
	t.mu.Lock()
	dev, client := t.dev, t.wg
	peers := make(map[string]Peer, len(t.peers))
	for c, p := range t.peers {
		peers[c] = p
	}
	verdicts := make([]Verdict, 0, len(t.verdicts))
	for _, v := range t.verdicts {
		verdicts = append(verdicts, v)
	}
	t.mu.Unlock()
	if dev == nil {
		return nil, nil, errors.New("the device is not up")
	}
	d, err := client.Device(dev.Name)
	if err != nil {
		return dev, nil, fmt.Errorf("reading device %s: %w", dev.Name, err)
	}
	slices.SortFunc(verdicts, func(a, b Verdict) int { return strings.Compare(a.Cluster, b.Cluster) })
	byKey := map[wgtypes.Key]*wgtypes.Peer{}
	for i := range d.Peers {
		byKey[d.Peers[i].PublicKey] = &d.Peers[i]
	}
	now := time.Now()
	out := make([]PeerStatus, 0, len(verdicts))
	for _, v := range verdicts {
		ps := PeerStatus{Cluster: v.Cluster, State: v.State, Reason: v.State, Message: v.Reason}
		if p, ok := peers[v.Cluster]; ok && v.State == "" {
			ps.Peer = byKey[p.Key]
			var hv verdict
			hv, ps.RTT = t.health.state(v.Cluster, ps.Peer, now)
			ps.State, ps.Reason, ps.Message = hv.state, hv.reason, hv.message
		} else if v.State == "" {
			ps.State, ps.Reason, ps.Message = StateError, "NotConfigured", "its peer could not be configured; see the log"
		}
		out = append(out, ps)
	}
	return dev, out, nil
}

// recordCache decodes the informer's records, converting each object
// only when its resourceVersion changed: with many clusters the
// conversion, not the device, would otherwise dominate a pass.
type recordCache struct {
	byName map[string]cachedRecord
}

type cachedRecord struct {
	resourceVersion string
	record          brokerv1.Cluster
}

// Records are decoded one at a time, reading timestamps as the apiserver
// accepts them (records.Decode); one that still does not decode is left
// out (no peer, no route) and returned in skipped, never allowed to stop
// the pass and so every other peer's update.
func (rc *recordCache) decode(store cache.Store) (out []brokerv1.Cluster, skipped []error) {
	objs := store.List()
	next := make(map[string]cachedRecord, len(objs))
	out = make([]brokerv1.Cluster, 0, len(objs))
	for _, o := range objs {
		u, ok := o.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		c, ok := rc.byName[u.GetName()]
		if !ok || c.resourceVersion != u.GetResourceVersion() {
			c = cachedRecord{resourceVersion: u.GetResourceVersion()}
			if err := records.Decode(u, &c.record); err != nil {
				skipped = append(skipped, fmt.Errorf("cluster record %s does not decode: %w", u.GetName(), err))
				continue
			}
		}
		next[u.GetName()] = c
		out = append(out, c.record)
	}
	rc.byName = next
	return out, skipped
}
