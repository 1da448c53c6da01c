// Package source builds the xDS server's model of the clusterset from
// Kubernetes: the local cluster's ServiceImports and MCS EndpointSlices
// (which the agent writes, the local cluster's own endpoints included), and
// the broker's Cluster records and heartbeat Leases. It tells its consumer
// which services changed, so only those are translated again.
package source

import (
	"context"
	"errors"
	"fmt"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubeinformers "k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"
	mcsinformers "sigs.k8s.io/mcs-api/pkg/client/informers/externalversions"

	"github.com/isthmus-dev/isthmus/mcs/api/broker/records"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/xds/model"
)

// AnnotationUpstreamTLS on a ServiceImport (travelling from the
// ServiceExport's exportedAnnotations) set to "mtls" asks proxyless gRPC
// clients in direct mode to speak mTLS to the service's pods.
const AnnotationUpstreamTLS = "isthmus.dev/upstream-tls"

// byService indexes MCS slices by the namespace/name of their service.
const byService = "service"

func sliceService(obj any) ([]string, error) {
	sl, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return nil, nil
	}
	return []string{sl.Namespace + "/" + sl.Labels[mcsv1beta1.LabelServiceName]}, nil
}

// Config is what a Source reads from.
type Config struct {
	Local  model.Local
	Kube   kubernetes.Interface
	MCS    mcsclient.Interface
	Broker kubernetes.Interface
	// BrokerRecords reads the broker's Cluster records, one object at a
	// time (mcs/api/broker/records): one member's odd record must not keep
	// the others from syncing.
	BrokerRecords   dynamic.Interface
	BrokerNamespace string
	// LeaseDuration is used for a Lease that names no duration.
	LeaseDuration time.Duration
	// ProbeEvery is how often the broker's reachability is checked; while
	// it is unreachable no cluster's health changes (every Lease would
	// look expired, and nothing would be known).
	ProbeEvery time.Duration
	Log        *slog.Logger
}

// Change says what changed since the last call of the consumer.
type Change struct {
	// Services changed (or were deleted: Service returns nil for them).
	Services []model.Key
	// Clusters is true when any cluster's record or health changed.
	Clusters bool
}

// Source keeps the model current and reports changes.
type Source struct {
	cfg Config

	imports   cache.SharedIndexInformer
	slices    cache.SharedIndexInformer
	records   cache.SharedIndexInformer
	leases    cache.SharedIndexInformer
	onChange  func(Change)
	synced    atomic.Bool
	kick      chan struct{}
	mu        sync.Mutex
	dirty     map[model.Key]bool
	dirtyCl   bool
	link      brokerv1.BrokerLink // guarded by mu
	clock     brokerv1.HeartbeatClock
	timerMu   sync.Mutex
	nextCheck *time.Timer
}

// neverWithdrawn: the xDS server has no withdrawal of its own (the agent
// withdraws imports); a lapsed cluster stays merely unreachable.
const neverWithdrawn = 100 * 365 * 24 * time.Hour

// New builds a Source; Run starts it and calls onChange from one
// goroutine at a time.
func New(cfg Config, onChange func(Change)) *Source {
	s := &Source{cfg: cfg, onChange: onChange, kick: make(chan struct{}, 1), dirty: map[model.Key]bool{}}
	s.clock.Default = cfg.LeaseDuration
	s.link = brokerv1.BrokerLink{Up: true, Since: time.Now()}
	kf := kubeinformers.NewSharedInformerFactoryWithOptions(cfg.Kube, 0, kubeinformers.WithTweakListOptions(func(o *metav1.ListOptions) {
		// Only the agent's slices: a tenant who may write EndpointSlices
		// could otherwise forge "another cluster's" endpoints with the MCS
		// labels alone.
		o.LabelSelector = mcsv1beta1.LabelServiceName + "," + mcsv1beta1.LabelSourceCluster + "," +
			discoveryv1.LabelManagedBy + "=" + brokerv1.ManagedBy
	}))
	s.slices = kf.Discovery().V1().EndpointSlices().Informer()
	// Must succeed: the informer has not started.
	_ = s.slices.AddIndexers(cache.Indexers{byService: sliceService})
	s.imports = mcsinformers.NewSharedInformerFactory(cfg.MCS, 0).Multicluster().V1beta1().ServiceImports().Informer()
	bf := kubeinformers.NewSharedInformerFactoryWithOptions(cfg.Broker, 0, kubeinformers.WithNamespace(cfg.BrokerNamespace))
	s.leases = bf.Coordination().V1().Leases().Informer()
	s.records = records.NewClusterInformer(cfg.BrokerRecords, cfg.BrokerNamespace, 0, cache.Indexers{},
		func(_ schema.GroupVersionResource, _, name string, err error) {
			cfg.Log.Warn("leaving out a Cluster record that does not decode", "name", name, "err", err)
		})

	serviceEvent := func(obj any) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		m, ok := obj.(metav1.Object)
		if !ok {
			return
		}
		name := m.GetName()
		if sl, ok := obj.(*discoveryv1.EndpointSlice); ok {
			name = sl.Labels[mcsv1beta1.LabelServiceName]
		}
		s.markService(model.Key{Namespace: m.GetNamespace(), Name: name})
	}
	for _, inf := range []cache.SharedIndexInformer{s.imports, s.slices} {
		_, _ = inf.AddEventHandler(handler(serviceEvent))
	}
	_, _ = s.records.AddEventHandler(handler(func(any) { s.setLink(true); s.markClusters() }))
	// Every Lease delivered is a heartbeat seen now, by this process's
	// clock (brokerv1.HeartbeatClock says why).
	_, _ = s.leases.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { s.observe(o) },
		UpdateFunc: func(_, o any) { s.observe(o) },
		DeleteFunc: func(o any) {
			if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
				o = t.Obj
			}
			if l, ok := o.(*coordinationv1.Lease); ok {
				s.clock.Forget(l.Labels[brokerv1.LabelSourceCluster])
			}
			s.markClusters()
		},
	})
	return s
}

func handler(f func(any)) cache.ResourceEventHandlerFuncs {
	return cache.ResourceEventHandlerFuncs{AddFunc: f, UpdateFunc: func(_, n any) { f(n) }, DeleteFunc: f}
}

func (s *Source) observe(o any) {
	if l, ok := o.(*coordinationv1.Lease); ok {
		s.clock.Observe(l, time.Now())
	}
	s.setLink(true)
	s.markClusters()
}

// setLink records the broker's reachability; a change re-judges every
// cluster.
func (s *Source) setLink(up bool) bool {
	s.mu.Lock()
	changed := s.link.Up != up
	if changed {
		s.link = brokerv1.BrokerLink{Up: up, Since: time.Now()}
	}
	s.mu.Unlock()
	if changed {
		s.markClusters()
	}
	return changed
}

func (s *Source) markService(k model.Key) {
	s.mu.Lock()
	s.dirty[k] = true
	s.mu.Unlock()
	s.poke()
}

func (s *Source) markClusters() {
	s.mu.Lock()
	s.dirtyCl = true
	s.mu.Unlock()
	s.poke()
}

func (s *Source) poke() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Ready reports nil once both the local cluster and the broker were
// listed.
func (s *Source) Ready() error {
	if !s.synced.Load() {
		return errors.New("ServiceImports, EndpointSlices, Cluster records and Leases not synced yet")
	}
	return nil
}

// Run runs the informers and reports changes until ctx ends. The first
// report, after the first sync, lists every service.
func (s *Source) Run(ctx context.Context) error {
	for _, inf := range []cache.SharedIndexInformer{s.imports, s.slices, s.records, s.leases} {
		go inf.Run(ctx.Done())
	}
	if !cache.WaitForCacheSync(ctx.Done(), s.imports.HasSynced, s.slices.HasSynced, s.records.HasSynced, s.leases.HasSynced) {
		return fmt.Errorf("waiting for the first sync of ServiceImports, EndpointSlices and broker records: %w", ctx.Err())
	}
	s.mu.Lock()
	for _, o := range s.imports.GetStore().List() {
		si := o.(*mcsv1beta1.ServiceImport)
		s.dirty[model.Key{Namespace: si.Namespace, Name: si.Name}] = true
	}
	s.dirtyCl = true
	s.mu.Unlock()
	s.scheduleJudgement()
	s.synced.Store(true)
	s.poke()
	go s.probeBroker(ctx)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.kick:
		}
		s.mu.Lock()
		ch := Change{Clusters: s.dirtyCl}
		for k := range s.dirty {
			ch.Services = append(ch.Services, k)
		}
		s.dirty, s.dirtyCl = map[model.Key]bool{}, false
		s.mu.Unlock()
		if ch.Clusters {
			s.scheduleJudgement()
		}
		if len(ch.Services) > 0 || ch.Clusters {
			s.onChange(ch)
		}
	}
}

// probeBroker reads this cluster's own Lease every ProbeEvery, so a
// silent broker is noticed even when no event would arrive.
func (s *Source) probeBroker(ctx context.Context) {
	t := time.NewTicker(s.cfg.ProbeEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, s.cfg.ProbeEvery)
		_, err := s.cfg.Broker.CoordinationV1().Leases(s.cfg.BrokerNamespace).Get(pctx, brokerv1.LeaseName(s.cfg.Local.ClusterID), metav1.GetOptions{})
		cancel()
		up := err == nil || isNotFound(err)
		if s.setLink(up) {
			s.cfg.Log.Info("broker reachability changed", "reachable", up, "err", err)
		}
	}
}

// Service returns the model of k, or nil when it is not imported here.
func (s *Source) Service(k model.Key) *model.Service {
	o, ok, err := s.imports.GetStore().GetByKey(k.Namespace + "/" + k.Name)
	if err != nil || !ok {
		return nil
	}
	si := o.(*mcsv1beta1.ServiceImport)
	svc := &model.Service{Key: k, Type: model.ClusterSetIP, Endpoints: map[string][]model.Endpoint{}}
	if si.Spec.Type == mcsv1beta1.Headless {
		svc.Type = model.Headless
	}
	svc.MTLS = si.Annotations[AnnotationUpstreamTLS] == "mtls"
	egress := map[string]int32{}
	if ports, err := brokerv1.ParseEgressPorts(si.Annotations[brokerv1.AnnotationEgressPorts]); err != nil {
		s.cfg.Log.Warn("ignoring the gateway egress ports of a ServiceImport", "serviceimport", k, "err", err)
	} else {
		for _, p := range ports {
			egress[fmt.Sprintf("%s/%d", p.Protocol, p.Port)] = p.Egress
		}
	}
	for _, p := range si.Spec.Ports {
		proto := model.Protocol(p.Protocol)
		if proto == "" {
			proto = model.TCP
		}
		svc.Ports = append(svc.Ports, model.Port{Name: p.Name, Protocol: proto, Port: p.Port, Egress: egress[fmt.Sprintf("%s/%d", proto, p.Port)]})
	}
	for _, c := range si.Status.Clusters {
		svc.Endpoints[c.Cluster] = nil
	}
	// The index, not a scan of every slice: a full sync translates every
	// service, and a scan would make that quadratic in the services.
	slices, _ := s.slices.GetIndexer().ByIndex(byService, k.Namespace+"/"+k.Name)
	for _, o := range slices {
		sl := o.(*discoveryv1.EndpointSlice)
		c := sl.Labels[mcsv1beta1.LabelSourceCluster]
		svc.Endpoints[c] = append(svc.Endpoints[c], endpointsOf(sl)...)
	}
	return svc
}

// Clusters returns every member cluster with its health.
func (s *Source) Clusters() map[string]*model.Cluster {
	out := map[string]*model.Cluster{}
	var local *brokerv1.Cluster
	for _, o := range s.records.GetStore().List() {
		rec, err := toCluster(o)
		if err != nil {
			s.cfg.Log.Warn("ignoring a Cluster record", "err", err)
			continue
		}
		c := &model.Cluster{ID: rec.Spec.ClusterID, Region: rec.Spec.Region, Zone: rec.Spec.Zone, Healthy: true}
		for _, g := range rec.Spec.Gateways {
			if ap, err := parseAddrPort(g.Address, g.Port); err == nil {
				c.Gateways = append(c.Gateways, ap)
			}
		}
		if rec.Spec.ClusterID == s.cfg.Local.ClusterID {
			local = rec
		}
		out[c.ID] = c
	}
	s.mu.Lock()
	link := s.link
	s.mu.Unlock()
	now := time.Now()
	for id, c := range out {
		if id == s.cfg.Local.ClusterID {
			continue
		}
		h, _ := s.clock.Judge(id, &link, now, neverWithdrawn)
		if ok, reason := brokerv1.Reachability(h, local, id); !ok {
			c.Healthy, c.Reason = false, reason
		}
	}
	return out
}

// scheduleJudgement re-marks the clusters when the soonest judgement
// would change (a heartbeat lapsing) though no event arrives.
func (s *Source) scheduleJudgement() {
	s.mu.Lock()
	link := s.link
	s.mu.Unlock()
	now := time.Now()
	next := time.Duration(0)
	for _, o := range s.records.GetStore().List() {
		rec, err := toCluster(o)
		if err != nil || rec.Spec.ClusterID == s.cfg.Local.ClusterID {
			continue
		}
		if _, d := s.clock.Judge(rec.Spec.ClusterID, &link, now, neverWithdrawn); d > 0 && (next == 0 || d < next) {
			next = d
		}
	}
	if next > 0 {
		s.timerMu.Lock()
		if s.nextCheck != nil {
			s.nextCheck.Stop()
		}
		s.nextCheck = time.AfterFunc(next+10*time.Millisecond, s.markClusters)
		s.timerMu.Unlock()
	}
}

func toCluster(o any) (*brokerv1.Cluster, error) {
	c, ok := o.(*brokerv1.Cluster)
	if !ok {
		return nil, fmt.Errorf("unexpected %T in the Cluster informer", o)
	}
	return c, nil
}
