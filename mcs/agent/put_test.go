package agent

import (
	"errors"
	"maps"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestKeepForeign: an update written whole keeps what another manager put
// on the object and drops what only the agent had set and no longer
// wants. (TestExportImportLifecycle checks the same through apiservers.)
func TestKeepForeign(t *testing.T) {
	fields := metav1.NewFieldsV1
	cur := &metav1.ObjectMeta{
		ResourceVersion: "42",
		Finalizers:      []string{"example.com/hold"},
		Labels:          map[string]string{"tier": "frontend", "app": "web", "team": "blue"},
		Annotations:     map[string]string{"isthmus.dev/hash": "old", "example.com/note": "kept"},
		ManagedFields: []metav1.ManagedFieldsEntry{
			{Manager: fieldManager, Operation: metav1.ManagedFieldsOperationApply,
				FieldsV1: fields(`{"f:metadata":{"f:labels":{"f:tier":{},"f:app":{}},"f:annotations":{"f:isthmus.dev/hash":{}}}}`)},
			{Manager: "kubectl-label", Operation: metav1.ManagedFieldsOperationUpdate,
				FieldsV1: fields(`{"f:metadata":{"f:labels":{"f:team":{}}}}`)},
			{Manager: "kubectl-annotate", Operation: metav1.ManagedFieldsOperationUpdate,
				FieldsV1: fields(`{"f:metadata":{"f:annotations":{"f:example.com/note":{}}}}`)},
			{Manager: "broken", Operation: metav1.ManagedFieldsOperationUpdate, FieldsV1: fields(`not json`)},
		},
	}
	want := &metav1.ObjectMeta{
		Labels:      map[string]string{"app": "web2"},
		Annotations: map[string]string{"isthmus.dev/hash": "new"},
	}
	keepForeign(want, cur)
	if want.ResourceVersion != "42" {
		t.Errorf("resourceVersion %q, want the one read", want.ResourceVersion)
	}
	if len(want.Finalizers) != 1 || want.Finalizers[0] != "example.com/hold" {
		t.Errorf("finalizers %v, want another's kept", want.Finalizers)
	}
	if w := map[string]string{"app": "web2", "team": "blue"}; !maps.Equal(want.Labels, w) {
		t.Errorf("labels %v, want %v (the agent's dropped label gone, another's kept, the agent's value winning)", want.Labels, w)
	}
	if w := map[string]string{"isthmus.dev/hash": "new", "example.com/note": "kept"}; !maps.Equal(want.Annotations, w) {
		t.Errorf("annotations %v, want %v", want.Annotations, w)
	}

	// Nothing foreign: exactly what the agent wants.
	bare := &metav1.ObjectMeta{}
	keepForeign(bare, &metav1.ObjectMeta{ResourceVersion: "7", Labels: map[string]string{"x": "y"}})
	if bare.Labels != nil || bare.ResourceVersion != "7" {
		t.Errorf("got labels %v, resourceVersion %q", bare.Labels, bare.ResourceVersion)
	}
}

// TestOwnWrites: an object shows the agent's write while it holds the
// hash last intended; a failed write is forgotten unless a later one was
// intended meanwhile; a deletion forgets.
func TestOwnWrites(t *testing.T) {
	var w ownWrites
	obj := func(hash string) *metav1.ObjectMeta {
		return &metav1.ObjectMeta{Annotations: map[string]string{annotationHash: hash}}
	}
	const k = "import/ns/web"
	if w.shows(k, obj("h1")) {
		t.Error("an object the agent never wrote shows its write")
	}
	w.intend(k, "h1")
	if !w.shows(k, obj("h1")) || w.shows(k, obj("h0")) || w.shows(k, &metav1.ObjectMeta{}) {
		t.Error("only the intended hash shows the agent's write")
	}
	w.intend(k, "h2")
	w.failed(k, "h1") // an older write's failure leaves the newer intent
	if !w.shows(k, obj("h2")) {
		t.Error("an older write's failure forgot the newer one")
	}
	w.failed(k, "h2")
	if w.shows(k, obj("h2")) {
		t.Error("a failed write still shows")
	}
	if err := w.noted(k, "h3", func() error { return nil }); err != nil || !w.shows(k, obj("h3")) {
		t.Error("a written hash does not show")
	}
	w.forget(k)
	if w.shows(k, obj("h3")) {
		t.Error("a deleted object's write still shows")
	}

	// The agent's own deletion is gone without a trace; anyone else's,
	// or one whose delete failed, or one written again since, is not.
	if err := w.noted(k, deletedMark, func() error { return nil }); err != nil || !w.gone(k) {
		t.Error("the agent's own deletion is not recognised")
	}
	if w.gone(k) {
		t.Error("a deletion is recognised twice")
	}
	w.intend(k, "h4")
	if w.gone(k) {
		t.Error("a deletion by someone else (the agent last wrote h4) counts as the agent's")
	}
	if err := w.noted(k, deletedMark, func() error { return errors.New("refused") }); err == nil || w.gone(k) {
		t.Error("a failed deletion counts as the agent's")
	}
	_ = w.noted(k, deletedMark, func() error { return nil })
	w.intend(k, "h5") // written again before the deletion's event came
	if w.gone(k) || w.shows(k, obj("h5")) {
		t.Error("an object deleted, then written again, hides the deletion's event, or is remembered after it")
	}
}
