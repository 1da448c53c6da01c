package agent

import (
	"context"
	"encoding/json"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The custom resources only the agent writes (its broker records, its
// ServiceImports) are written whole: a create when absent, else an update
// from the resourceVersion the agent read. A server-side apply of a
// custom resource costs the apiserver twice a create (bench/mcslatency
// -writes: the field manager converts the object to its schema's typed
// form and merges it), and the first write of an export and of an import
// is on the path a user waits on. Writing whole also removes what the
// agent no longer wants (a port a Service dropped) whoever's field it
// was: the managed fields of a create are an Update manager's, which a
// later apply could not take back.

// objectAPI is the part of a generated typed client put needs.
type objectAPI[T metav1.Object] interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (T, error)
	Create(ctx context.Context, obj T, opts metav1.CreateOptions) (T, error)
	Update(ctx context.Context, obj T, opts metav1.UpdateOptions) (T, error)
}

// put writes want whole. cur is the object as the cache holds it (ok
// false when the cache holds none); unchanged reports whether an object
// already holds what want says, so a stale cache that made put write
// is caught by the live object instead of a second write. What others
// added to the object's labels, annotations and finalizers is kept
// (keepForeign).
func put[T metav1.Object](ctx context.Context, api objectAPI[T], want T, cur T, ok bool, unchanged func(T) bool) (T, error) {
	for attempt := 0; ; attempt++ {
		var out T
		var err error
		if !ok {
			want.SetResourceVersion("")
			out, err = api.Create(ctx, want, metav1.CreateOptions{FieldManager: fieldManager})
			if !apierrors.IsAlreadyExists(err) {
				return out, err
			}
		} else {
			keepForeign(want, cur)
			out, err = api.Update(ctx, want, metav1.UpdateOptions{FieldManager: fieldManager})
			if !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
				return out, err
			}
		}
		// The cache was behind: read the object as it stands and try once
		// more from there (a requeue retries after that).
		if attempt == 1 {
			return out, err
		}
		live, gerr := api.Get(ctx, want.GetName(), metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(gerr):
			ok = false
		case gerr != nil:
			return out, gerr
		case unchanged(live):
			return live, nil
		default:
			cur, ok = live, true
		}
	}
}

// writeWhole is the write of every object the agent alone writes: nothing
// when cur (the cache's, ok) already holds hash, else want, carrying hash,
// written by put and counted; ownKey, when set, is where ownWrites
// remembers it so its event queues nothing.
func writeWhole[T metav1.Object](ctx context.Context, a *Agent, api objectAPI[T], want, cur T, ok bool, hash, target, ownKey string) (T, error) {
	holds := func(o T) bool { return o.GetAnnotations()[annotationHash] == hash }
	if ok && holds(cur) {
		return cur, nil
	}
	annotations := want.GetAnnotations()
	if annotations == nil {
		annotations = map[string]string{}
	}
	annotations[annotationHash] = hash
	want.SetAnnotations(annotations)
	var out T
	write := func() (err error) {
		out, err = put(ctx, api, want, cur, ok, holds)
		a.countWrite(target, writeVerb(ok), err)
		return err
	}
	var err error
	if ownKey == "" {
		err = write()
	} else {
		err = a.own.noted(ownKey, hash, write)
	}
	// Not `return out, write()`: the spec leaves unordered whether out is
	// read before or after the call that sets it.
	return out, err
}

// keepForeign makes want an update of cur: its resourceVersion, its
// finalizers, and the labels and annotations another manager (a person,
// another controller) put on cur. The managed fields say whose a key is:
// a key only the agent set and no longer wants goes.
func keepForeign(want, cur metav1.Object) {
	want.SetResourceVersion(cur.GetResourceVersion())
	if len(want.GetFinalizers()) == 0 {
		want.SetFinalizers(cur.GetFinalizers())
	}
	labels, annotations := foreignKeys(cur)
	want.SetLabels(withForeign(want.GetLabels(), cur.GetLabels(), labels))
	want.SetAnnotations(withForeign(want.GetAnnotations(), cur.GetAnnotations(), annotations))
}

// foreignKeys are the label and annotation keys of obj that a manager
// other than the agent owns.
func foreignKeys(obj metav1.Object) (labels, annotations map[string]bool) {
	labels, annotations = map[string]bool{}, map[string]bool{}
	for _, e := range obj.GetManagedFields() {
		if e.Manager == fieldManager || e.FieldsV1 == nil {
			continue
		}
		var f struct {
			Metadata struct {
				Labels      map[string]json.RawMessage `json:"f:labels"`
				Annotations map[string]json.RawMessage `json:"f:annotations"`
			} `json:"f:metadata"`
		}
		if json.Unmarshal(e.FieldsV1.GetRawBytes(), &f) != nil {
			continue
		}
		for k := range f.Metadata.Labels {
			labels[strings.TrimPrefix(k, "f:")] = true
		}
		for k := range f.Metadata.Annotations {
			annotations[strings.TrimPrefix(k, "f:")] = true
		}
	}
	return labels, annotations
}

// withForeign is want with cur's entries under foreign keys that want does
// not set.
func withForeign(want, cur map[string]string, foreign map[string]bool) map[string]string {
	for k, v := range cur {
		if _, set := want[k]; !set && foreign[k] {
			if want == nil {
				want = map[string]string{}
			}
			want[k] = v
		}
	}
	return want
}

// writeVerb names a put for the writes metric.
func writeVerb(existed bool) string {
	if existed {
		return "update"
	}
	return "create"
}
