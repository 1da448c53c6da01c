package agent

import (
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
