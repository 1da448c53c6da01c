// Package agent is the MCS agent of one member cluster. Its export
// controller publishes this cluster's ServiceExports to the broker (one
// ExportedService record per service and copies of the service's
// EndpointSlices, all owned by this cluster); its import controller builds,
// from every cluster's records, the ServiceImports, derived Services and
// EndpointSlices of this cluster (a pure plan, plan.go, then its
// application, apply.go); its heartbeat keeps this cluster's Lease
// and Cluster record on the broker. It reads the broker only through
// informers, so while the broker is away it keeps what it last saw and
// withdraws nothing. In gateway mode the derived Services point at the
// local east-west gateway's egress ports, which it allocates and records
// on the ServiceImports for the xDS server.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"
	mcslisters "sigs.k8s.io/mcs-api/pkg/client/listers/apis/v1beta1"

	brokerclient "github.com/isthmus-dev/isthmus/mcs/api/broker/generated/clientset/versioned"
	brokerlisters "github.com/isthmus-dev/isthmus/mcs/api/broker/generated/listers/broker/v1alpha1"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// Config is what an agent needs. Clients, the logger and the registry are
// the caller's; the agent reads no flags and no globals.
type Config struct {
	// ClusterID is this cluster's id, a DNS label.
	ClusterID string
	// BrokerNamespace is the broker namespace on the hub.
	BrokerNamespace string
	// Region and Zone place this cluster for locality-aware failover.
	Region, Zone string
	// PodCIDRs and ServiceCIDRs are published in the Cluster record.
	PodCIDRs, ServiceCIDRs []string
	// Version is the agent's version, published in the Cluster record.
	Version string

	// Local reaches this cluster; Broker, BrokerClient (writes of this
	// member's broker records) and BrokerDynamic (reads of every member's,
	// one object at a time: mcs/api/broker/records) reach the hub with
	// this member's own identity.
	Local         kubernetes.Interface
	LocalMCS      mcsclient.Interface
	Broker        kubernetes.Interface
	BrokerClient  brokerclient.Interface
	BrokerDynamic dynamic.Interface

	// LeaseDuration is how long this cluster's heartbeat Lease is valid; it
	// is renewed every third of it. Zero means 30 s. Another cluster is
	// judged by the duration its own Lease names (this one when it names
	// none).
	LeaseDuration time.Duration
	// WithdrawAfter is how long an unrenewed Lease may be before that
	// cluster's exports are withdrawn from this cluster's imports. Zero
	// means 5 minutes.
	WithdrawAfter time.Duration
	// Workers per controller; zero means 2.
	Workers int
	// LeaderElectionNamespace, when set, makes replicas of the agent elect
	// one leader through a Lease of that name in that namespace of this
	// cluster; only the leader writes. Empty runs without election.
	LeaderElectionNamespace string
	// Identity names this replica in the election.
	Identity string

	// Dataplane is how traffic crosses clusters: brokerv1.DataplaneDirect
	// (empty means it) or brokerv1.DataplaneGateway.
	Dataplane brokerv1.Dataplane
	// GatewayNamespace and GatewayName name the local Service in front of
	// the east-west gateway pods, in gateway mode; empty means
	// isthmus-system/isthmus-gateway.
	GatewayNamespace, GatewayName string
	// EgressPortMin and EgressPortMax bound the gateway egress ports the
	// agent allocates in gateway mode; zero means the defaults of
	// mcs/api (DefaultEgressPortMin, DefaultEgressPortMax).
	EgressPortMin, EgressPortMax int32
	// MaxImportsPerCluster caps how many services this agent imports
	// from any one other cluster: the oldest exports are taken, the rest
	// left out and reported (docs/security.md, H3). Zero means
	// DefaultMaxImportsPerCluster; there is no "no cap".
	MaxImportsPerCluster int
	// GatewayIngressPort is the gateway pods' mTLS port that other
	// clusters' gateways connect to, published with the pods' addresses
	// in this cluster's record in gateway mode; zero means mcs/api's
	// DefaultGatewayIngressPort.
	GatewayIngressPort int32

	Log      *slog.Logger
	Registry prometheus.Registerer
}

// Agent is a running MCS agent.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	events  record.EventRecorder
	// publishMu orders the record's publications (heartbeat, gateway
	// changes), so an older view never lands after a newer one.
	publishMu sync.Mutex

	informers []cache.SharedIndexInformer
	// synced are the event handlers' registrations, not the informers:
	// an informer is synced once its store holds the initial list, but its
	// handlers may still be working through it, and a reconcile that ran
	// before the import-cap ranking had seen every export left the
	// unranked ones out, deleting and then restoring their slices (612
	// writes after a restart at 1,000 members, bench/scale).
	synced      []cache.InformerSynced
	ready       atomic.Bool
	heartbeatOK atomic.Bool
	// own is what the agent last wrote to each object it writes, so the
	// event of its own write queues nothing (ownwrites.go).
	own     ownWrites
	leading atomic.Bool

	// families are this cluster's Service IP families, from its service
	// CIDRs: an import of none of them gets no ClusterSetIP here.
	families []corev1.IPFamily

	services       corelisters.ServiceLister
	namespaces     corelisters.NamespaceLister
	localSlices    cache.Indexer // this cluster's Services' EndpointSlices, byService
	ownSlices      cache.Indexer // EndpointSlices the agent wrote here, byService (the import's name)
	derived        cache.Indexer // derived Services the agent wrote here, byService
	serviceExports mcslisters.ServiceExportLister
	serviceImports mcslisters.ServiceImportLister
	brokerSlices   cache.Indexer               // broker EndpointSlices, byService
	brokerExports  cache.Indexer               // broker ExportedServices, byService
	clusters       brokerlisters.ClusterLister // broker Cluster records
	leases         cache.Store                 // broker Leases

	exports *controller
	imports *controller
	// caps ranks each other cluster's exports against the import cap;
	// capReports reports a cluster's change of standing once.
	caps       *importCaps
	capReports *controller

	emptySince atomic.Pointer[time.Time] // when the broker view became empty
	link       atomic.Pointer[brokerv1.BrokerLink]

	// heartbeats remembers when each peer's Lease was seen renewed.
	heartbeats brokerv1.HeartbeatClock
	healthMu   sync.Mutex
	health     map[string]brokerv1.Health // last computed health per cluster

	// Gateway mode: the egress port allocator, made when leading starts,
	// and the signal that the gateway Service's slices changed.
	egress         *egressAllocator
	gatewayChanged chan struct{}
}

const byService = "byService"

// New checks the configuration and prepares the agent's informers.
func New(cfg Config) (*Agent, error) {
	if errs := validation.IsDNS1123Label(cfg.ClusterID); len(errs) > 0 {
		return nil, fmt.Errorf("cluster id %q is not a DNS label: %v", cfg.ClusterID, errs)
	}
	if cfg.BrokerNamespace == "" {
		cfg.BrokerNamespace = brokerv1.DefaultBrokerNamespace
	}
	if cfg.LeaseDuration == 0 {
		cfg.LeaseDuration = 30 * time.Second
	}
	if cfg.WithdrawAfter == 0 {
		cfg.WithdrawAfter = 5 * time.Minute
	}
	if cfg.WithdrawAfter < cfg.LeaseDuration {
		return nil, fmt.Errorf("withdraw-after %v is shorter than the lease duration %v", cfg.WithdrawAfter, cfg.LeaseDuration)
	}
	if cfg.Workers == 0 {
		cfg.Workers = 2
	}
	if cfg.MaxImportsPerCluster == 0 {
		cfg.MaxImportsPerCluster = DefaultMaxImportsPerCluster
	}
	if cfg.MaxImportsPerCluster < 0 {
		return nil, fmt.Errorf("max imports per cluster %d is negative", cfg.MaxImportsPerCluster)
	}
	if err := checkGatewayConfig(&cfg); err != nil {
		return nil, err
	}
	if cfg.Local == nil || cfg.LocalMCS == nil || cfg.Broker == nil || cfg.BrokerClient == nil || cfg.BrokerDynamic == nil || cfg.Log == nil || cfg.Registry == nil {
		return nil, errors.New("agent config lacks a client, the logger or the registry")
	}
	a := &Agent{cfg: cfg, log: cfg.Log.With("cluster", cfg.ClusterID), metrics: newMetrics(cfg.Registry), health: map[string]brokerv1.Health{},
		gatewayChanged: make(chan struct{}, 1)}
	a.heartbeats.Default = cfg.LeaseDuration
	a.families = serviceFamilies(cfg.ServiceCIDRs)
	if a.gatewayMode() {
		a.metrics.egressCapacity.Set(float64(cfg.EgressPortMax - cfg.EgressPortMin + 1))
	}

	eventScheme := runtime.NewScheme()
	if err := scheme.AddToScheme(eventScheme); err != nil {
		return nil, err
	}
	if err := mcsv1beta1.Install(eventScheme); err != nil {
		return nil, err
	}
	broadcaster := record.NewBroadcaster()
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: cfg.Local.CoreV1().Events("")})
	a.events = broadcaster.NewRecorder(eventScheme, corev1.EventSource{Component: "isthmus-agent"})

	a.exports = newController("export", a.syncExport, a.log, a.metrics)
	a.imports = newController("import", a.syncImport, a.log, a.metrics)
	a.caps = newImportCaps(cfg.ClusterID, cfg.MaxImportsPerCluster)
	a.capReports = newController("import-cap", a.reportCap, a.log, a.metrics)
	if err := a.setupInformers(); err != nil {
		return nil, err
	}
	return a, nil
}

// Run runs the agent until ctx ends: informers, both controllers, the
// heartbeat and the health watch.
func (a *Agent) Run(ctx context.Context) error {
	for _, inf := range a.informers {
		go inf.Run(ctx.Done())
	}
	if !cache.WaitForCacheSync(ctx.Done(), a.synced...) {
		return fmt.Errorf("waiting for informers to sync: %w", ctx.Err())
	}
	a.ready.Store(true)
	a.log.Info("synced with the local cluster and the broker")
	if a.cfg.LeaderElectionNamespace == "" {
		a.lead(ctx)
		return nil
	}
	return a.elect(ctx)
}

// lead does the agent's writing work until ctx ends. The heartbeat starts
// after the sync so that it finds the Cluster record in the cache and does
// not rewrite an unchanged one.
func (a *Agent) lead(ctx context.Context) {
	a.leading.Store(true)
	defer a.leading.Store(false)
	linked := make(chan struct{})
	go a.heartbeat(ctx, linked)
	go a.watchHealth(ctx, time.Second)
	// Imports follow the peers' health, and health is judged only once
	// the first heartbeat has said whether the broker is reached: before
	// that, a peer that died before this start would count as healthy and
	// its endpoints come back until the next health check.
	select {
	case <-linked:
	case <-ctx.Done():
		return
	}
	if a.gatewayMode() {
		if err := a.seedEgress(ctx); err != nil {
			return // ctx ended
		}
		go a.watchGateway(ctx)
	}
	var wg sync.WaitGroup
	wg.Go(func() { a.exports.run(ctx, a.cfg.Workers) })
	wg.Go(func() { a.imports.run(ctx, a.cfg.Workers) })
	wg.Go(func() { a.capReports.run(ctx, 1) })
	wg.Wait()
}

// Ready reports nil once the agent has synced with both its cluster and
// the broker and has renewed its heartbeat once.
func (a *Agent) Ready() error {
	if !a.ready.Load() {
		return errors.New("informers not synced with the local cluster and the broker yet")
	}
	if a.leading.Load() && !a.heartbeatOK.Load() {
		return errors.New("no heartbeat to the broker has succeeded yet")
	}
	return nil
}
