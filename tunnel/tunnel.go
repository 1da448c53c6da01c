package tunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/v1alpha1"
)

// FieldManager is the server-side apply field manager that owns the
// tunnel's fields of the cluster record (spec.wireGuard and the Tunnel*
// conditions), so the agent's fields never conflict with them.
const FieldManager = "isthmus-tunnel"

var clusterGVR = brokerv1.SchemeGroupVersion.WithResource("clusters")

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
	RouteTable     int
	KeyNamespace   string
	KeySecret      string
}

// Validate reports the first unusable setting.
func (c Config) Validate() error {
	switch {
	case c.ClusterID == "":
		return errors.New("a cluster id is required")
	case c.BrokerNamespace == "":
		return errors.New("a broker namespace is required")
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
	case c.RouteTable < 1:
		return fmt.Errorf("route table %d must be positive", c.RouteTable)
	case c.KeyNamespace == "" || c.KeySecret == "":
		return errors.New("the key Secret's namespace and name are required")
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

	mu       sync.Mutex
	dev      *Device
	wg       wgClient
	pub      wgtypes.Key
	peers    []Peer
	verdicts []Verdict
	notReady error

	seq     atomic.Uint64
	records recordCache // used by the reconcile loop only
}

// New returns a tunnel for cfg: broker holds the cluster records, local
// holds the key Secret.
func New(cfg Config, broker dynamic.Interface, local kubernetes.Interface, log *slog.Logger) (*Tunnel, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("tunnel configuration: %w", err)
	}
	t := &Tunnel{cfg: cfg, broker: broker, local: local, log: log, notReady: errors.New("starting")}
	t.health.peers = map[string]*peerHealth{}
	t.metrics = newMetrics(t)
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
// until ctx ends, then removes its peers and routes and the device.
func (t *Tunnel) Run(ctx context.Context) (err error) {
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
	rec := &reconciler{
		wg: client, dev: dev.Name, proto: netlink.RouteProtocol(t.cfg.RouteProtocol), table: t.cfg.RouteTable,
		keepalive: t.cfg.Keepalive, advertised: map[wgtypes.Key]netip.AddrPort{},
	}
	defer func() {
		// The clean shutdown: peers and routes first, so nothing is left
		// pointing at a device that is going away, then the device.
		if cerr := rec.clear(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("removing peers and routes: %w", cerr))
		}
		if cerr := dev.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
		client.Close()
		t.log.Info("tunnel stopped; peers and routes removed", "device", dev.Name)
	}()
	port := t.cfg.ListenPort
	if err := client.ConfigureDevice(dev.Name, wgtypes.Config{PrivateKey: &key, ListenPort: &port}); err != nil {
		return fmt.Errorf("configuring key and port of %s: %w", dev.Name, err)
	}
	t.mu.Lock()
	t.dev, t.wg, t.pub = dev, client, key.PublicKey()
	t.mu.Unlock()
	t.log.Info("WireGuard device up", "device", dev.Name, "implementation", dev.Implementation, "offload", dev.Offload,
		"publicKey", key.PublicKey().String(), "listenPort", port)
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
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { poke() },
		UpdateFunc: func(any, any) { poke() },
		DeleteFunc: func(any) { poke() },
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
	probing := make(chan struct{})
	go func() {
		defer close(probing)
		probes := time.NewTicker(t.cfg.ProbeInterval)
		defer probes.Stop()
		var status statusWriter
		for {
			select {
			case <-infCtx.Done():
				return
			case <-probes.C:
				t.probeAll()
				status.maybeWrite(infCtx, t)
			}
		}
	}()
	defer func() { stopInf(); <-probing }()
	do := func() {
		start := time.Now()
		err := t.reconcile(ctx, rec, inf, &echo)
		t.metrics.reconcileDuration.Observe(time.Since(start).Seconds())
		if err != nil {
			t.log.Error("reconciling the tunnel", "err", err)
		}
		t.setReady(err)
	}
	do()
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
			do()
		case <-resync.C:
			if err := t.followKey(ctx, client, dev.Name); err != nil {
				t.log.Error("following the key Secret", "err", err)
			}
			do()
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
	t.mu.Unlock()
	if key.PublicKey() == old {
		return nil
	}
	if err := client.ConfigureDevice(dev, wgtypes.Config{PrivateKey: &key}); err != nil {
		return fmt.Errorf("putting the rotated key on %s: %w", dev, err)
	}
	t.mu.Lock()
	t.pub = key.PublicKey()
	t.mu.Unlock()
	t.log.Info("WireGuard key rotated", "old", old.String(), "new", key.PublicKey().String())
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

// reconcile runs one pass: read the records, plan, apply by difference.
func (t *Tunnel) reconcile(ctx context.Context, rec *reconciler, inf cache.SharedIndexInformer, echo *echoState) error {
	records, err := t.records.decode(inf.GetStore())
	if err != nil {
		return err
	}
	t.mu.Lock()
	local := Local{Cluster: t.cfg.ClusterID, PublicKey: t.pub}
	t.mu.Unlock()
	var own *brokerv1.Cluster
	for i := range records {
		if records[i].Name == t.cfg.ClusterID {
			own = &records[i]
		}
	}
	var addr netip.Addr
	if own != nil {
		if local.PodCIDRs, err = parsePrefixes(own.Spec.PodCIDRs); err != nil {
			return fmt.Errorf("this cluster's own record: pod %w", err)
		}
		if local.ServiceCIDRs, err = parsePrefixes(own.Spec.ServiceCIDRs); err != nil {
			return fmt.Errorf("this cluster's own record: service %w", err)
		}
		if len(local.PodCIDRs) > 0 {
			addr = TunnelAddress(local.PodCIDRs[0])
		}
	}
	if own == nil || own.Spec.WireGuard == nil || own.Spec.WireGuard.PublicKey != local.PublicKey.String() || own.Spec.WireGuard.Endpoint != t.cfg.Endpoint.String() {
		// Not published yet, changed by someone else, or the record was
		// deleted and must be recreated.
		if err := t.publishSpec(ctx); err != nil {
			return err
		}
	}
	var ip []byte
	if addr.IsValid() {
		ip = addr.AsSlice()
	}
	link, err := linkUp(t.cfg.Device, ip)
	if err != nil {
		return err
	}
	peers, verdicts := Plan(local, records)
	ch, applyErr := rec.apply(link, addr, peers, inf.HasSynced())
	if applyErr != nil {
		t.metrics.reconcileErrors.WithLabelValues("peer_or_route").Inc()
	}
	// Only the peers that made it onto the device count as configured.
	var configured []Peer
	for _, p := range peers {
		if _, ok := rec.advertised[p.Key]; ok {
			configured = append(configured, p)
		}
	}
	t.health.sync(configured, time.Now())
	t.mu.Lock()
	t.peers, t.verdicts = configured, verdicts
	t.mu.Unlock()
	for _, v := range verdicts {
		if v.State != "" && v.State != StatePending {
			t.log.Warn("remote cluster not peered", "cluster", v.Cluster, "state", v.State, "reason", v.Reason)
		}
	}
	if ch.any() {
		t.log.Info("tunnel reconciled", "peersAdded", ch.added, "peersUpdated", ch.updated, "peersRemoved", ch.removed,
			"routesAdded", ch.routesAdded, "routesRemoved", ch.routesRemoved)
	}
	if addr.IsValid() {
		if err := echo.ensure(ctx, netip.AddrPortFrom(addr, uint16(t.cfg.ProbePort)), t.log); err != nil {
			return errors.Join(applyErr, err)
		}
	} else {
		return errors.Join(applyErr, errors.New("this cluster's record has no pod CIDRs yet, so the tunnel has no address"))
	}
	return applyErr
}

// probeAll sends one echo to every configured peer's tunnel address, in
// parallel, and waits for them all.
func (t *Tunnel) probeAll() {
	t.mu.Lock()
	peers := t.peers
	t.mu.Unlock()
	src := netip.Addr{}
	var wg sync.WaitGroup
	for _, p := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			timeout := min(t.cfg.ProbeInterval, time.Second)
			rtt, err := probe(src, netip.AddrPortFrom(p.TunnelAddr, uint16(t.cfg.ProbePort)), t.seq.Add(1), timeout)
			if err != nil {
				t.metrics.probeFailures.WithLabelValues(p.Cluster).Inc()
			} else {
				t.metrics.probeRTT.WithLabelValues(p.Cluster).Observe(rtt.Seconds())
			}
			t.health.record(p.Cluster, rtt, err)
		}()
	}
	wg.Wait()
}

// PeerStatus is one remote cluster's state as this tunnel sees it.
type PeerStatus struct {
	Cluster string
	State   string
	Reason  string
	Peer    *wgtypes.Peer
}

// Status is a snapshot of the device and every remote cluster's state.
func (t *Tunnel) Status() (*Device, []PeerStatus, error) {
	t.mu.Lock()
	dev, client, peers, verdicts := t.dev, t.wg, t.peers, t.verdicts
	t.mu.Unlock()
	if dev == nil {
		return nil, nil, errors.New("the device is not up")
	}
	d, err := client.Device(dev.Name)
	if err != nil {
		return dev, nil, fmt.Errorf("reading device %s: %w", dev.Name, err)
	}
	byKey := map[wgtypes.Key]*wgtypes.Peer{}
	for i := range d.Peers {
		byKey[d.Peers[i].PublicKey] = &d.Peers[i]
	}
	byCluster := map[string]Peer{}
	for _, p := range peers {
		byCluster[p.Cluster] = p
	}
	now := time.Now()
	out := make([]PeerStatus, 0, len(verdicts))
	for _, v := range verdicts {
		ps := PeerStatus{Cluster: v.Cluster, State: v.State, Reason: v.Reason}
		if p, ok := byCluster[v.Cluster]; ok && v.State == "" {
			ps.Peer = byKey[p.Key]
			ps.State, ps.Reason = t.health.state(v.Cluster, ps.Peer, now)
		} else if v.State == "" {
			ps.State, ps.Reason = StateError, "its peer could not be configured; see the log"
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

func (rc *recordCache) decode(store cache.Store) ([]brokerv1.Cluster, error) {
	objs := store.List()
	next := make(map[string]cachedRecord, len(objs))
	out := make([]brokerv1.Cluster, 0, len(objs))
	for _, o := range objs {
		u, ok := o.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		c, ok := rc.byName[u.GetName()]
		if !ok || c.resourceVersion != u.GetResourceVersion() {
			c = cachedRecord{resourceVersion: u.GetResourceVersion()}
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &c.record); err != nil {
				return nil, fmt.Errorf("decoding cluster record %s: %w", u.GetName(), err)
			}
		}
		next[u.GetName()] = c
		out = append(out, c.record)
	}
	rc.byName = next
	return out, nil
}
