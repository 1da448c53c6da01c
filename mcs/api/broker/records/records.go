// Package records lists and watches the broker's records (Cluster,
// ExportedService) as the apiserver accepts them, one object at a time.
//
// Every member reads records that other members wrote, and the apiserver
// accepts more than a strict decoder does: its date-time check lowercases
// the string and lets any character stand before fractional seconds, so
// `2020-01-01t00:00:00z` is stored while metav1.Time refuses it. Through a
// typed clientset one such object fails the decoding of the whole list, so
// one member's write would keep every informer in the clusterset from ever
// syncing. Here each object is decoded on its own: timestamps in the forms
// the apiserver accepts are read, and an object that still does not decode
// is left out and reported to the caller, never allowed to take the others
// with it.
package records

import (
	"context"
	"fmt"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/cache"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// Undecodable is called for each object left out, with its name and why;
// callers count it and say so where a person looks (a condition, an Event).
type Undecodable func(resource schema.GroupVersionResource, namespace, name string, err error)

// Decode converts one object into out, reading timestamps in every form the
// apiserver accepts.
func Decode(u *unstructured.Unstructured, out runtime.Object) error {
	err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, out)
	if err == nil {
		return nil
	}
	fixed, changed := normalizeTimes(u.DeepCopy().Object, "")
	if !changed {
		return err
	}
	if err2 := runtime.DefaultUnstructuredConverter.FromUnstructured(fixed.(map[string]any), out); err2 != nil {
		return err
	}
	return nil
}

// normalizeTimes rewrites, under keys that name a time (…Time,
// …Timestamp), strings the apiserver accepts as date-time into RFC 3339.
func normalizeTimes(v any, key string) (any, bool) {
	switch x := v.(type) {
	case map[string]any:
		changed := false
		for k, e := range x {
			n, c := normalizeTimes(e, k)
			x[k], changed = n, changed || c
		}
		return x, changed
	case []any:
		changed := false
		for i, e := range x {
			n, c := normalizeTimes(e, key)
			x[i], changed = n, changed || c
		}
		return x, changed
	case string:
		if !strings.HasSuffix(key, "Time") && !strings.HasSuffix(key, "Timestamp") {
			return x, false
		}
		if _, err := time.Parse(time.RFC3339, x); err == nil {
			return x, false
		}
		if t, ok := lenientTime(x); ok {
			return t.UTC().Format(time.RFC3339Nano), true
		}
	}
	return v, false
}

// lenientTime reads what kube-openapi's date-time check lets through: any
// case, and any single character before the fractional seconds.
func lenientTime(s string) (time.Time, bool) {
	if len(s) < 20 {
		return time.Time{}, false
	}
	b := []byte(strings.ToUpper(s))
	if c := b[19]; c != '.' && c != 'Z' && c != '+' && c != '-' {
		b[19] = '.'
	}
	t, err := time.Parse(time.RFC3339Nano, string(b))
	return t, err == nil
}

// NewClusterInformer watches the Cluster records of namespace.
func NewClusterInformer(dyn dynamic.Interface, namespace string, resync time.Duration, indexers cache.Indexers, bad Undecodable) cache.SharedIndexInformer {
	return newInformer(dyn, brokerv1.ClustersResource, namespace, resync, indexers, bad,
		func() runtime.Object { return &brokerv1.Cluster{} },
		func(items []runtime.Object, meta metav1.ListMeta) runtime.Object {
			l := &brokerv1.ClusterList{ListMeta: meta}
			for _, o := range items {
				l.Items = append(l.Items, *o.(*brokerv1.Cluster))
			}
			return l
		})
}

// NewExportedServiceInformer watches the ExportedService records of
// namespace.
func NewExportedServiceInformer(dyn dynamic.Interface, namespace string, resync time.Duration, indexers cache.Indexers, bad Undecodable) cache.SharedIndexInformer {
	return newInformer(dyn, brokerv1.ExportedServicesResource, namespace, resync, indexers, bad,
		func() runtime.Object { return &brokerv1.ExportedService{} },
		func(items []runtime.Object, meta metav1.ListMeta) runtime.Object {
			l := &brokerv1.ExportedServiceList{ListMeta: meta}
			for _, o := range items {
				l.Items = append(l.Items, *o.(*brokerv1.ExportedService))
			}
			return l
		})
}

func newInformer(dyn dynamic.Interface, gvr schema.GroupVersionResource, ns string, resync time.Duration, indexers cache.Indexers, bad Undecodable,
	newObj func() runtime.Object, newList func([]runtime.Object, metav1.ListMeta) runtime.Object) cache.SharedIndexInformer {
	if bad == nil {
		bad = func(schema.GroupVersionResource, string, string, error) {}
	}
	decode := func(u *unstructured.Unstructured) (runtime.Object, bool) {
		o := newObj()
		if err := Decode(u, o); err != nil {
			bad(gvr, u.GetNamespace(), u.GetName(), fmt.Errorf("%s %s/%s does not decode: %w", gvr.Resource, u.GetNamespace(), u.GetName(), err))
			return nil, false
		}
		return o, true
	}
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
			ul, err := dyn.Resource(gvr).Namespace(ns).List(ctx, opts)
			if err != nil {
				return nil, err
			}
			items := make([]runtime.Object, 0, len(ul.Items))
			for i := range ul.Items {
				if o, ok := decode(&ul.Items[i]); ok {
					items = append(items, o)
				}
			}
			return newList(items, metav1.ListMeta{ResourceVersion: ul.GetResourceVersion(), Continue: ul.GetContinue()}), nil
		},
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			w, err := dyn.Resource(gvr).Namespace(ns).Watch(ctx, opts)
			if err != nil {
				return nil, err
			}
			return watch.Filter(w, func(e watch.Event) (watch.Event, bool) {
				u, ok := e.Object.(*unstructured.Unstructured)
				if !ok || e.Type == watch.Error {
					return e, true // status errors pass as they are
				}
				if e.Type == watch.Bookmark {
					// The reflector wants the informer's own type; a
					// bookmark is only metadata (its resourceVersion, and
					// the end-of-initial-events annotation).
					return watch.Event{Type: e.Type, Object: stub(newObj, u, true)}, true
				}
				o, ok := decode(u)
				switch {
				case ok:
					e.Object = o
				case e.Type == watch.Added:
					return e, false
				default:
					// Modified into something unreadable, or deleted: it
					// leaves the store either way, as a re-list would
					// leave it out.
					e = watch.Event{Type: watch.Deleted, Object: stub(newObj, u, false)}
				}
				return e, true
			}), nil
		},
	}
	// Declares whether dyn can stream the initial list (WatchList); a
	// fake client in unit tests cannot.
	return cache.NewSharedIndexInformer(cache.ToListWatcherWithWatchListSemantics(lw, dyn), newObj(), resync, indexers)
}

// stub is an object of the informer's type carrying only u's identity (and
// all of its metadata for a bookmark).
func stub(newObj func() runtime.Object, u *unstructured.Unstructured, bookmark bool) runtime.Object {
	o := newObj()
	m := o.(metav1.Object)
	m.SetName(u.GetName())
	m.SetNamespace(u.GetNamespace())
	m.SetResourceVersion(u.GetResourceVersion())
	if bookmark {
		m.SetAnnotations(u.GetAnnotations())
	}
	return o
}
