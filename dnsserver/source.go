package dnsserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubeinformers "k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"
	mcsinformers "sigs.k8s.io/mcs-api/pkg/client/informers/externalversions"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// SliceSelector selects the EndpointSlices the index reads: MCS slices,
// which name their service and the cluster they came from, written by the
// Isthmus agent. Anyone allowed to write EndpointSlices in a namespace can
// put the MCS labels on one; requiring the agent's managed-by label keeps
// a tenant from adding "another cluster's" endpoints to a clusterset name.
const SliceSelector = mcsv1beta1.LabelServiceName + "," + mcsv1beta1.LabelSourceCluster + "," +
	discoveryv1.LabelManagedBy + "=" + brokerv1.ManagedBy

// probeEvery is how often Source checks that the apiserver still answers
// while no event arrives, for the sync age.
const probeEvery = 5 * time.Second

// Source feeds a Builder from one cluster's apiserver with informers over
// ServiceImports and MCS EndpointSlices in every namespace, and stores a
// new Index in the Handler after each change. Once synced it never
// withdraws an index: while the apiserver is away the last one answers,
// and the informers catch up when it returns.
type Source struct {
	kube    kubernetes.Interface
	mcs     mcsclient.Interface
	builder *Builder
	handler *Handler
	metrics *Metrics
	log     *slog.Logger

	changed  chan struct{}
	synced   atomic.Bool
	lastSeen atomic.Int64 // unix nanoseconds of the last sign of the apiserver
}

// SourceConfig is what NewSource needs.
type SourceConfig struct {
	// Kube and MCS reach the cluster whose ServiceImports and
	// EndpointSlices are served.
	Kube kubernetes.Interface
	MCS  mcsclient.Interface
	// Builder builds each index, Handler answers from it.
	Builder *Builder
	Handler *Handler
	// Metrics, when set, record every index's size.
	Metrics *Metrics
	// Registry, when set, receives isthmus_dns_sync_age_seconds.
	Registry prometheus.Registerer
	Log      *slog.Logger
}

// NewSource returns a Source; Run starts it.
func NewSource(cfg SourceConfig) (*Source, error) {
	if cfg.Kube == nil || cfg.MCS == nil || cfg.Builder == nil || cfg.Handler == nil || cfg.Log == nil {
		return nil, errors.New("a DNS source needs the clients, a builder, a handler and a logger")
	}
	s := &Source{kube: cfg.Kube, mcs: cfg.MCS, builder: cfg.Builder, handler: cfg.Handler, metrics: cfg.Metrics, log: cfg.Log, changed: make(chan struct{}, 1)}
	if cfg.Registry != nil {
		if err := cfg.Registry.Register(syncAgeGauge(s.SyncAge)); err != nil {
			return nil, fmt.Errorf("registering the DNS sync age: %w", err)
		}
	}
	return s, nil
}

// Ready reports nil once the first full sync is in the handler.
func (s *Source) Ready() error {
	if !s.synced.Load() {
		return errors.New("ServiceImports and EndpointSlices not synced yet")
	}
	return nil
}

// SyncAge is how long ago the apiserver last showed it was there (an
// event, or an answer to the periodic probe): how stale answers may be.
func (s *Source) SyncAge() time.Duration {
	t := s.lastSeen.Load()
	if t == 0 {
		return 0
	}
	return time.Since(time.Unix(0, t))
}

func (s *Source) seen() { s.lastSeen.Store(time.Now().UnixNano()) }

func (s *Source) notify() {
	s.seen()
	select {
	case s.changed <- struct{}{}:
	default: // a build is already due; it will see this change too
	}
}

// Run runs the informers and publishes indexes until ctx ends.
func (s *Source) Run(ctx context.Context) error {
	mf := mcsinformers.NewSharedInformerFactory(s.mcs, 0)
	kf := kubeinformers.NewSharedInformerFactoryWithOptions(s.kube, 0,
		kubeinformers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = SliceSelector }))
	imports := mf.Multicluster().V1beta1().ServiceImports().Informer()
	slices := kf.Discovery().V1().EndpointSlices().Informer()
	for _, inf := range []cache.SharedIndexInformer{imports, slices} {
		if err := inf.SetWatchErrorHandlerWithContext(func(_ context.Context, r *cache.Reflector, err error) {
			s.log.Warn("watch failed; answering from the last index until it recovers", "reflector", r.TypeDescription(), "err", err)
		}); err != nil {
			return fmt.Errorf("setting watch error handler: %w", err)
		}
		if err := inf.SetTransform(trim); err != nil {
			return fmt.Errorf("setting transform: %w", err)
		}
	}
	if _, err := imports.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { s.setImport(o) },
		UpdateFunc: func(_, o any) { s.setImport(o) },
		DeleteFunc: func(o any) {
			if ns, name, ok := deletedKey(o); ok {
				s.builder.DeleteImport(ns, name)
				s.notify()
			}
		},
	}); err != nil {
		return fmt.Errorf("watching ServiceImports: %w", err)
	}
	if _, err := slices.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { s.setSlice(o) },
		UpdateFunc: func(_, o any) { s.setSlice(o) },
		DeleteFunc: func(o any) {
			if ns, name, ok := deletedKey(o); ok {
				s.builder.DeleteSlice(ns, name)
				s.notify()
			}
		},
	}); err != nil {
		return fmt.Errorf("watching EndpointSlices: %w", err)
	}
	mf.Start(ctx.Done())
	kf.Start(ctx.Done())
	defer mf.Shutdown()
	defer kf.Shutdown()

	start := time.Now()
	if !cache.WaitForCacheSync(ctx.Done(), imports.HasSynced, slices.HasSynced) {
		return ctx.Err()
	}
	s.publish()
	s.synced.Store(true)
	s.seen()
	s.log.Info("synced", "services", s.handler.Index().Services(), "names", s.handler.Index().Names(), "took", time.Since(start).Round(time.Millisecond))

	probe := time.NewTicker(probeEvery)
	defer probe.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.changed:
			if s.builder.Dirty() {
				s.publish()
			}
		case <-probe.C:
			pctx, cancel := context.WithTimeout(ctx, probeEvery)
			if _, err := s.kube.Discovery().RESTClient().Get().AbsPath("/version").DoRaw(pctx); err == nil {
				s.seen()
			}
			cancel()
		}
	}
}

func (s *Source) publish() {
	ix := s.builder.Build()
	s.handler.Store(ix)
	if s.metrics != nil {
		s.metrics.SetIndex(ix)
	}
}

func (s *Source) setImport(o any) {
	if si, ok := o.(*mcsv1beta1.ServiceImport); ok {
		s.builder.SetImport(si)
		s.notify()
	}
}

func (s *Source) setSlice(o any) {
	if es, ok := o.(*discoveryv1.EndpointSlice); ok {
		s.builder.SetSlice(es)
		s.notify()
	}
}

// deletedKey reads namespace and name from a deleted object, including
// the tombstone an informer hands over when it missed the deletion.
func deletedKey(o any) (string, string, bool) {
	if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
		o = t.Obj
	}
	m, ok := o.(metav1.Object)
	if !ok {
		return "", "", false
	}
	return m.GetNamespace(), m.GetName(), true
}

// trim drops, before an object enters the informer's cache, what the index
// never reads: managed fields and annotations (often larger than the
// object itself) and, in EndpointSlices, each endpoint's node, zone,
// hints and target reference. At 100,000 services the cache would
// otherwise hold more than the index.
func trim(obj any) (any, error) {
	switch o := obj.(type) {
	case *mcsv1beta1.ServiceImport:
		o.ManagedFields, o.Annotations = nil, nil
	case *discoveryv1.EndpointSlice:
		o.ManagedFields, o.Annotations, o.OwnerReferences = nil, nil, nil
		for i := range o.Endpoints {
			e := &o.Endpoints[i]
			e.NodeName, e.Zone, e.Hints, e.TargetRef, e.DeprecatedTopology = nil, nil, nil, nil, nil
		}
	}
	return obj, nil
}
