// Package hubquota is the hub's record counter (`isthmus hub-quota`): it
// counts, per member, the ExportedServices and broker EndpointSlices in
// the broker namespace by their source-cluster label, and writes the
// counts into each member's MemberPolicy status, where the broker's
// allowlist admission policy compares them with the member's limits
// (rules max-exports and max-endpoint-slices). An admission policy sees
// one object per request and cannot count; this component counts for it.
//
// It runs on the hub with the hub admin's least-privilege identity: list
// and watch of the records' metadata and of the MemberPolicies, and
// update of memberpolicies/status only.
package hubquota

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	brokerclient "github.com/isthmus-dev/isthmus/mcs/api/broker/generated/clientset/versioned"
	brokerinformers "github.com/isthmus-dev/isthmus/mcs/api/broker/generated/informers/externalversions"
	brokerlisters "github.com/isthmus-dev/isthmus/mcs/api/broker/generated/listers/broker/v1alpha1"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// Defaults of Config.
const (
	DefaultDebounce = time.Second
	DefaultResync   = 5 * time.Minute
)

// Config configures a Counter. It reads no flags.
type Config struct {
	// Metadata lists and watches the broker namespace's records, their
	// metadata only (the counter needs no more).
	Metadata metadata.Interface
	// Broker reads the MemberPolicies and writes their status.
	Broker brokerclient.Interface
	// Namespace is the broker namespace.
	Namespace string
	// Debounce is how long a member's changed count waits before it is
	// written, so a burst of creates costs one status write; zero means
	// DefaultDebounce.
	Debounce time.Duration
	// Resync is how often an unchanged count's observedTime is refreshed,
	// so a stale one says no counter runs; zero means DefaultResync.
	Resync time.Duration
	Log    *slog.Logger
	// Registry receives isthmus_hub_member_records.
	Registry prometheus.Registerer
}

// Counter counts each member's records and writes them into its
// MemberPolicy status.
type Counter struct {
	cfg     Config
	records *prometheus.GaugeVec
	queue   workqueue.TypedRateLimitingInterface[string]

	mu     sync.Mutex
	tally  *tally
	synced bool

	policies brokerlisters.MemberPolicyLister
	now      func() time.Time
}

var resources = [kinds]schema.GroupVersionResource{
	Exports:        brokerv1.SchemeGroupVersion.WithResource("exportedservices"),
	EndpointSlices: discoveryv1.SchemeGroupVersion.WithResource("endpointslices"),
}

// New returns a Counter; Run does the counting.
func New(cfg Config) (*Counter, error) {
	if cfg.Metadata == nil || cfg.Broker == nil || cfg.Namespace == "" || cfg.Log == nil {
		return nil, errors.New("hubquota: Metadata, Broker, Namespace and Log are required")
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = DefaultDebounce
	}
	if cfg.Resync <= 0 {
		cfg.Resync = DefaultResync
	}
	c := &Counter{
		cfg: cfg,
		records: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "isthmus_hub_member_records",
			Help: "Records each member holds on the broker, by kind (exports, endpointslices), as the hub's record counter counts them; admission refuses a member's new record of a kind once this reaches the limit in its MemberPolicy.",
		}, []string{"member", "kind"}),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](100*time.Millisecond, 30*time.Second),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "hub-quota"}),
		tally: newTally(),
		now:   time.Now,
	}
	if cfg.Registry != nil {
		if err := cfg.Registry.Register(c.records); err != nil {
			return nil, fmt.Errorf("registering the hub quota metric: %w", err)
		}
	}
	return c, nil
}

// Ready fails until the counter has listed every record, and so holds
// true counts.
func (c *Counter) Ready() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.synced {
		return errors.New("the hub's record counter has not listed the broker's records yet")
	}
	return nil
}

// Run counts until ctx ends. It writes nothing until every informer has
// synced, so a partial count never lowers a member's status.
func (c *Counter) Run(ctx context.Context) error {
	defer c.queue.ShutDown()
	// Only records carrying a member's label count, as admission keys
	// ownership on that label.
	req, err := labels.NewRequirement(brokerv1.LabelSourceCluster, selection.Exists, nil)
	if err != nil {
		return err
	}
	selector := labels.NewSelector().Add(*req).String()
	mf := metadatainformer.NewFilteredSharedInformerFactory(c.cfg.Metadata, 0, c.cfg.Namespace,
		func(o *metav1.ListOptions) { o.LabelSelector = selector })
	var syncs []cache.InformerSynced
	for k, gvr := range resources {
		inf := mf.ForResource(gvr).Informer()
		if _, err := inf.AddEventHandler(c.recordHandler(Kind(k))); err != nil {
			return err
		}
		syncs = append(syncs, inf.HasSynced)
	}
	bf := brokerinformers.NewSharedInformerFactoryWithOptions(c.cfg.Broker, c.cfg.Resync, brokerinformers.WithNamespace(c.cfg.Namespace))
	pinf := bf.Broker().V1alpha1().MemberPolicies()
	// A MemberPolicy's every event (created, changed, resynced) queues its
	// member: a new member's status is written, and an unchanged count's
	// observedTime refreshed every Resync.
	if _, err := pinf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { c.enqueuePolicy(obj) },
		UpdateFunc: func(_, obj any) { c.enqueuePolicy(obj) },
	}); err != nil {
		return err
	}
	c.policies = pinf.Lister()
	syncs = append(syncs, pinf.Informer().HasSynced)
	mf.Start(ctx.Done())
	bf.Start(ctx.Done())
	defer mf.Shutdown()
	defer bf.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), syncs...) {
		return ctx.Err()
	}
	c.mu.Lock()
	c.synced = true
	c.mu.Unlock()
	c.cfg.Log.Info("counting the members' records", "namespace", c.cfg.Namespace, "debounce", c.cfg.Debounce, "resync", c.cfg.Resync)
	go func() {
		<-ctx.Done()
		c.queue.ShutDown()
	}()
	for c.next(ctx) {
	}
	return nil
}

func (c *Counter) enqueuePolicy(obj any) {
	if mp, ok := obj.(*brokerv1.MemberPolicy); ok {
		c.queue.Add(mp.Name)
	}
}

// recordHandler keeps the tally of kind k from an informer's events.
func (c *Counter) recordHandler(k Kind) cache.ResourceEventHandler {
	member := func(obj any) string {
		if m, ok := obj.(*metav1.PartialObjectMetadata); ok {
			return m.Labels[brokerv1.LabelSourceCluster]
		}
		return ""
	}
	name := func(obj any) string {
		key, _ := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
		return key
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { c.observe(k, name(obj), member(obj)) },
		UpdateFunc: func(_, obj any) { c.observe(k, name(obj), member(obj)) },
		DeleteFunc: func(obj any) { c.observe(k, name(obj), "") },
	}
}

// observe moves one record in the tally and queues, debounced, each
// member whose count changed.
func (c *Counter) observe(k Kind, name, member string) {
	c.mu.Lock()
	changed := c.tally.set(k, name, member)
	counts := make([]Counts, len(changed))
	for i, m := range changed {
		counts[i] = c.tally.get(m)
	}
	c.mu.Unlock()
	for i, m := range changed {
		if counts[i][k] == 0 {
			c.records.DeleteLabelValues(m, k.String())
		} else {
			c.records.WithLabelValues(m, k.String()).Set(float64(counts[i][k]))
		}
		// A key already waiting keeps its earlier time: a burst is one write.
		c.queue.AddAfter(m, c.cfg.Debounce)
	}
}

func (c *Counter) next(ctx context.Context) bool {
	member, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(member)
	if err := c.sync(ctx, member); err != nil {
		level := slog.LevelWarn
		if apierrors.IsConflict(err) {
			level = slog.LevelDebug
		}
		c.cfg.Log.Log(ctx, level, "writing a member's record counts, will retry", "member", member, "err", err, "retries", c.queue.NumRequeues(member))
		c.queue.AddRateLimited(member)
		return true
	}
	c.queue.Forget(member)
	return true
}

// sync writes member's counts into its MemberPolicy status when they
// differ from what it holds, or when its observedTime is half a Resync
// old. A member without a MemberPolicy has no limits to enforce.
func (c *Counter) sync(ctx context.Context, member string) error {
	mp, err := c.policies.MemberPolicies(c.cfg.Namespace).Get(member)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	c.mu.Lock()
	counts := c.tally.get(member)
	c.mu.Unlock()
	want, ok := desiredStatus(mp.Status, counts, c.now(), c.cfg.Resync)
	if !ok {
		return nil
	}
	mp = mp.DeepCopy()
	mp.Status = want
	if _, err := c.cfg.Broker.BrokerV1alpha1().MemberPolicies(c.cfg.Namespace).UpdateStatus(ctx, mp, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("updating MemberPolicy %s/%s status: %w", c.cfg.Namespace, member, err)
	}
	c.cfg.Log.Debug("wrote a member's record counts", "member", member, "exports", counts[Exports], "endpointSlices", counts[EndpointSlices])
	return nil
}

// desiredStatus is the status to write for counts at now, and whether
// one must be written: the counts differ, or the observedTime is missing
// or at least half a resync old.
func desiredStatus(have brokerv1.MemberPolicyStatus, counts Counts, now time.Time, resync time.Duration) (brokerv1.MemberPolicyStatus, bool) {
	fresh := have.ObservedTime != nil && now.Sub(have.ObservedTime.Time) < resync/2
	if have.Exports == counts[Exports] && have.EndpointSlices == counts[EndpointSlices] && fresh {
		return have, false
	}
	t := metav1.NewTime(now.UTC().Truncate(time.Second))
	return brokerv1.MemberPolicyStatus{Exports: counts[Exports], EndpointSlices: counts[EndpointSlices], ObservedTime: &t}, true
}
