package agent

import (
	"fmt"
	"maps"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	coordinationinformers "k8s.io/client-go/informers/coordination/v1"
	coreinformers "k8s.io/client-go/informers/core/v1"
	discoveryinformers "k8s.io/client-go/informers/discovery/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsinformers "sigs.k8s.io/mcs-api/pkg/client/informers/externalversions/apis/v1beta1"
	mcslisters "sigs.k8s.io/mcs-api/pkg/client/listers/apis/v1beta1"

	brokerlisters "github.com/isthmus-dev/isthmus/mcs/api/broker/generated/listers/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/api/broker/records"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// setupInformers makes the agent's informers, each with the narrowest
// selector that still shows it what it needs, and wires their events to
// the controllers' queues. Nothing resyncs on a timer: events drive
// everything, and the health watch covers time passing.
func (a *Agent) setupInformers() error {
	local, broker, ns := a.cfg.Local, a.cfg.Broker, a.cfg.BrokerNamespace
	indexByService := cache.Indexers{byService: serviceIndex}
	managedByUs := func(o *metav1.ListOptions) {
		o.LabelSelector = discoveryv1.LabelManagedBy + "=" + brokerv1.ManagedBy
	}

	svcInf := coreinformers.NewServiceInformer(local, metav1.NamespaceAll, 0, cache.Indexers{})
	nsInf := coreinformers.NewNamespaceInformer(local, 0, cache.Indexers{})
	localSliceInf := discoveryinformers.NewFilteredEndpointSliceInformer(local, metav1.NamespaceAll, 0, indexByService, func(o *metav1.ListOptions) {
		o.LabelSelector = discoveryv1.LabelManagedBy + "!=" + brokerv1.ManagedBy + "," + discoveryv1.LabelServiceName
	})
	ownSliceInf := discoveryinformers.NewFilteredEndpointSliceInformer(local, metav1.NamespaceAll, 0, indexByService, managedByUs)
	derivedInf := coreinformers.NewFilteredServiceInformer(local, metav1.NamespaceAll, 0, indexByService, func(o *metav1.ListOptions) {
		o.LabelSelector = labelDerivedFor
	})
	exportInf := mcsinformers.NewServiceExportInformer(a.cfg.LocalMCS, metav1.NamespaceAll, 0, cache.Indexers{})
	importInf := mcsinformers.NewServiceImportInformer(a.cfg.LocalMCS, metav1.NamespaceAll, 0, cache.Indexers{})
	brokerSliceInf := discoveryinformers.NewFilteredEndpointSliceInformer(broker, ns, 0, indexByService, managedByUs)
	leaseInf := coordinationinformers.NewLeaseInformer(broker, ns, 0, cache.Indexers{})
	// Other members' records are decoded one at a time: one odd record
	// must not keep the whole list from syncing.
	undecodable := func(gvr schema.GroupVersionResource, _, name string, err error) {
		a.metrics.undecodable.WithLabelValues(gvr.Resource).Inc()
		a.log.Warn("leaving out a broker record that does not decode", "resource", gvr.Resource, "name", name, "err", err)
	}
	brokerExportInf := records.NewExportedServiceInformer(a.cfg.BrokerDynamic, ns, 0,
		cache.Indexers{byService: serviceIndex, byCluster: clusterIndex}, undecodable)
	// The lister reads by namespace: without its index every List scans
	// and warns.
	clusterInf := records.NewClusterInformer(a.cfg.BrokerDynamic, ns, 0,
		cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc}, undecodable)

	a.services = corelisters.NewServiceLister(svcInf.GetIndexer())
	a.namespaces = corelisters.NewNamespaceLister(nsInf.GetIndexer())
	a.localSlices = localSliceInf.GetIndexer()
	a.ownSlices = ownSliceInf.GetIndexer()
	a.derived = derivedInf.GetIndexer()
	a.serviceExports = mcslisters.NewServiceExportLister(exportInf.GetIndexer())
	a.serviceImports = mcslisters.NewServiceImportLister(importInf.GetIndexer())
	a.brokerSlices = brokerSliceInf.GetIndexer()
	a.brokerExports = brokerExportInf.GetIndexer()
	a.clusters = brokerlisters.NewClusterLister(clusterInf.GetIndexer())
	a.leases = leaseInf.GetStore()

	// Which keys an object's change concerns.
	both := func(key string) { a.exports.enqueue(key); a.imports.enqueue(key) }
	// own names, for the objects the agent writes, the key under which
	// ownWrites remembers the object's last write.
	own := func(key func(ns, name string) string) func(o any) string {
		return func(o any) string {
			m := unwrap(o).(metav1.Object)
			return key(m.GetNamespace(), m.GetName())
		}
	}
	handlers := []struct {
		inf cache.SharedIndexInformer
		fn  func(obj any)
		own func(obj any) string
	}{
		{exportInf, func(o any) { both(objectKey(o)) }, nil},
		{svcInf, func(o any) {
			// A derived Service is the agent's own import, never an export.
			if unwrap(o).(metav1.Object).GetLabels()[labelDerivedFor] == "" {
				a.exports.enqueue(objectKey(o))
			}
		}, nil},
		{localSliceInf, func(o any) {
			key := sliceServiceKey(o, discoveryv1.LabelServiceName)
			if a.gatewayMode() && key == a.gatewayKey() {
				a.gatewaySliceChanged()
			}
			both(key)
		}, nil},
		{brokerSliceInf, func(o any) {
			// This cluster's import of its own export reads its local
			// slices (endpointsOf), never their broker copies: the copy
			// this agent's export just wrote brings the import nothing.
			if unwrap(o).(metav1.Object).GetLabels()[brokerv1.LabelSourceCluster] != a.cfg.ClusterID {
				a.imports.enqueue(brokerSliceServiceKey(o))
			}
		}, nil},
		{nsInf, func(o any) { a.importsInNamespace(unwrap(o).(metav1.Object).GetName()) }, nil},
		{importInf, func(o any) { a.imports.enqueue(objectKey(o)) }, own(importWriteKey)},
		{ownSliceInf, func(o any) { a.imports.enqueue(ownKey(o)) }, own(sliceWriteKey)},
		{derivedInf, func(o any) { a.imports.enqueue(ownKey(o)) }, own(derivedWriteKey)},
	}
	for _, h := range handlers {
		fn, inf, ownKeyOf := h.fn, h.inf, h.own
		// An object holding the agent's own last write queues nothing.
		mine := func(o any) bool {
			return ownKeyOf != nil && a.own.shows(ownKeyOf(o), unwrap(o).(metav1.Object))
		}
		if err := a.watch(h.inf, cache.ResourceEventHandlerFuncs{
			AddFunc: func(o any) {
				if !mine(o) {
					fn(o)
				}
			},
			UpdateFunc: func(old, o any) {
				// The conditions this agent writes on a ServiceExport are
				// read by neither controller: their own event would only
				// queue the key again, and a reconcile from the informer's
				// copy older than the write conflicts and retries.
				if inf == exportInf && statusOnly(old, o) || mine(o) {
					return
				}
				fn(o)
			},
			DeleteFunc: func(o any) {
				if ownKeyOf != nil && a.own.gone(ownKeyOf(o)) {
					return
				}
				fn(o)
			},
		}); err != nil {
			return err
		}
	}
	// Handlers that need the version a change replaced (nil for an add or
	// a delete): a broker export's change moves its cluster's ranking
	// against the import cap (capped.go); a Cluster record's queues only
	// the imports it can move (clusterchange.go).
	for _, h := range []struct {
		inf     cache.SharedIndexInformer
		changed func(old, cur any)
	}{{brokerExportInf, a.exportRecordChanged}, {clusterInf, a.clusterChanged}} {
		changed := h.changed
		if err := a.watch(h.inf, cache.ResourceEventHandlerFuncs{
			AddFunc:    func(o any) { changed(nil, o) },
			UpdateFunc: changed,
			DeleteFunc: func(o any) { changed(o, nil) },
		}); err != nil {
			return err
		}
	}
	// The heartbeat clock learns of a renewal only here, when the Lease is
	// delivered, and must tell a deleted Lease from a renewed one.
	return a.watch(leaseInf, cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { a.observeLease(o, false) },
		UpdateFunc: func(_, o any) { a.observeLease(o, false) },
		DeleteFunc: func(o any) { a.observeLease(o, true) },
	})
}

// watch adds a handler to an informer and records both: the informer to
// run, and the handler's registration, whose sync readiness waits for
// (see Agent.synced).
func (a *Agent) watch(inf cache.SharedIndexInformer, h cache.ResourceEventHandler) error {
	reg, err := inf.AddEventHandler(h)
	if err != nil {
		return fmt.Errorf("adding event handler: %w", err)
	}
	a.informers = append(a.informers, inf)
	a.synced = append(a.synced, reg.HasSynced)
	return nil
}

// statusOnly reports whether a ServiceExport's update changed nothing but
// its status: not its spec (the generation), labels, annotations or
// deletion.
func statusOnly(old, o any) bool {
	x, ok1 := old.(*mcsv1beta1.ServiceExport)
	y, ok2 := o.(*mcsv1beta1.ServiceExport)
	return ok1 && ok2 && x.Generation == y.Generation && maps.Equal(x.Labels, y.Labels) &&
		maps.Equal(x.Annotations, y.Annotations) && x.DeletionTimestamp.Equal(y.DeletionTimestamp)
}

// serviceIndex files an object under the namespace/name of the service it
// belongs to.
func serviceIndex(obj any) ([]string, error) {
	switch o := obj.(type) {
	case *brokerv1.ExportedService:
		return []string{o.Spec.ServiceNamespace + "/" + o.Spec.ServiceName}, nil
	case *discoveryv1.EndpointSlice:
		if o.Labels[discoveryv1.LabelManagedBy] != brokerv1.ManagedBy {
			return []string{o.Namespace + "/" + o.Labels[discoveryv1.LabelServiceName]}, nil
		}
		if o.Labels[brokerv1.LabelServiceNamespace] != "" {
			// On the broker: the service's namespace is a label.
			return []string{o.Labels[brokerv1.LabelServiceNamespace] + "/" + o.Labels[brokerv1.LabelServiceName]}, nil
		}
		return []string{o.Namespace + "/" + ownerImport(o.Labels)}, nil
	case *corev1.Service:
		return []string{o.Namespace + "/" + o.Labels[labelDerivedFor]}, nil
	}
	return nil, nil
}

// ownerImport is the import an agent-written local object belongs to.
func ownerImport(l map[string]string) string {
	if n := l[labelDerivedFor]; n != "" {
		return n
	}
	return l[mcsv1beta1.LabelServiceName]
}

func unwrap(obj any) any {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		return t.Obj
	}
	return obj
}

func objectKey(obj any) string {
	o := unwrap(obj).(metav1.Object)
	return o.GetNamespace() + "/" + o.GetName()
}

func sliceServiceKey(obj any, label string) string {
	o := unwrap(obj).(metav1.Object)
	return o.GetNamespace() + "/" + o.GetLabels()[label]
}

func brokerSliceServiceKey(obj any) string {
	l := unwrap(obj).(metav1.Object).GetLabels()
	return l[brokerv1.LabelServiceNamespace] + "/" + l[brokerv1.LabelServiceName]
}

func ownKey(obj any) string {
	o := unwrap(obj).(metav1.Object)
	return o.GetNamespace() + "/" + ownerImport(o.GetLabels())
}

// importsInNamespace queues every service the broker knows in namespace ns,
// for a namespace that just appeared here (namespace sameness).
func (a *Agent) importsInNamespace(ns string) {
	for _, key := range a.brokerExports.ListIndexFuncValues(byService) {
		if n, _, _ := cutKey(key); n == ns {
			a.imports.enqueue(key)
		}
	}
}

// exportsAll queues every local ServiceExport.
func (a *Agent) exportsAll() {
	all, _ := a.serviceExports.List(everything)
	for _, se := range all {
		a.exports.enqueue(se.Namespace + "/" + se.Name)
	}
}

// importsAll queues every service the broker knows, for changes that can
// move any import (the local gateway's readiness).
func (a *Agent) importsAll() {
	for _, key := range a.brokerExports.ListIndexFuncValues(byService) {
		a.imports.enqueue(key)
	}
}
