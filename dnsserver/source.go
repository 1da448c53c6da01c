package dnsserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

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

// Source feeds a Builder from one cluster's apiserver with reflectors over
// ServiceImports and MCS EndpointSlices in every namespace, and stores a
// new Index in the Handler after each change. Once synced it never
// withdraws an index: while the apiserver is away the last one answers,
// and the reflectors catch up when it returns.
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

// Run runs the reflectors and publishes indexes until ctx ends.
//
// A reflector lists and watches one resource into a store; here the
// store hands every object to the Builder, which keeps a compact input
// per object, so no informer cache holds the objects a second time. The
// reflector relists after a watch it cannot resume, and its Replace
// removes what disappeared meanwhile.
func (s *Source) Run(ctx context.Context) error {
	b := s.builder
	imports := newStore(s, b.SetImport, b.DeleteImport, b.ReplaceImports)
	slices := newStore(s, b.SetSlice, b.DeleteSlice, b.ReplaceSlices)
	si := s.mcs.MulticlusterV1beta1().ServiceImports(metav1.NamespaceAll)
	es := s.kube.DiscoveryV1().EndpointSlices(metav1.NamespaceAll)
	reflectors := []*cache.Reflector{
		s.reflector("ServiceImports", &mcsv1beta1.ServiceImport{}, imports,
			func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return si.List(ctx, o) },
			func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) { return si.Watch(ctx, o) }),
		s.reflector("MCS EndpointSlices", &discoveryv1.EndpointSlice{}, slices,
			func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				o.LabelSelector = SliceSelector
				return es.List(ctx, o)
			},
			func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				o.LabelSelector = SliceSelector
				return es.Watch(ctx, o)
			}),
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for _, r := range reflectors {
		wg.Go(func() { r.RunWithContext(ctx) })
	}

	start := time.Now()
	for _, done := range []chan struct{}{imports.synced, slices.synced} {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-done:
		}
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

// reflector lists and watches one resource into store, logging when the
// apiserver cannot be reached (the reflector retries with backoff).
func (s *Source) reflector(what string, typ runtime.Object, store cache.ReflectorStore, list cache.ListWithContextFunc, watchFn cache.WatchFuncWithContext) *cache.Reflector {
	warn := func(op string, err error) {
		if err != nil && !errors.Is(err, context.Canceled) {
			s.log.Warn(op+" failed; answering from the last index until it recovers", "resource", what, "err", err)
		}
	}
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			obj, err := list(ctx, o)
			warn("list", err)
			return obj, err
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			w, err := watchFn(ctx, o)
			warn("watch", err)
			return w, err
		},
	}
	return cache.NewReflectorWithOptions(lw, typ, store, cache.ReflectorOptions{Name: "dns " + what, TypeDescription: what})
}

func (s *Source) publish() {
	ix := s.builder.Build()
	s.handler.Store(ix)
	if s.metrics != nil {
		s.metrics.SetIndex(ix)
	}
}

// store is a reflector's store: it hands every object of one resource
// to the Builder (set, del, replace) and keeps nothing itself.
type store[T metav1.Object] struct {
	src     *Source
	set     func(T)
	del     func(namespace, name string)
	replace func([]T)
	synced  chan struct{} // closed by the first Replace: the first full list
	once    sync.Once
}

func newStore[T metav1.Object](src *Source, set func(T), del func(string, string), replace func([]T)) *store[T] {
	return &store[T]{src: src, set: set, del: del, replace: replace, synced: make(chan struct{})}
}

func (st *store[T]) Add(o any) error { return st.Update(o) }
func (st *store[T]) Resync() error   { return nil }

func (st *store[T]) Update(o any) error {
	if obj, ok := o.(T); ok {
		st.set(obj)
		st.src.notify()
	}
	return nil
}

func (st *store[T]) Delete(o any) error {
	if ns, name, ok := deletedKey(o); ok {
		st.del(ns, name)
		st.src.notify()
	}
	return nil
}

func (st *store[T]) Replace(list []any, _ string) error {
	objs := make([]T, 0, len(list))
	for _, o := range list {
		if obj, ok := o.(T); ok {
			objs = append(objs, obj)
		}
	}
	st.replace(objs)
	st.src.notify()
	st.once.Do(func() { close(st.synced) })
	return nil
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
