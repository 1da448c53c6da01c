package agent

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
)

// TestStatusOnly pins which ServiceExport updates queue nothing: only
// those that change the status alone (the agent's own condition writes).
func TestStatusOnly(t *testing.T) {
	base := &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "demo", Generation: 1,
		Labels: map[string]string{"app": "web"}, Annotations: map[string]string{"a": "1"}}}
	now := metav1.Now()
	for _, tt := range []struct {
		name   string
		change func(*mcsv1beta1.ServiceExport)
		want   bool
	}{
		{"conditions written", func(se *mcsv1beta1.ServiceExport) {
			se.Status.Conditions = []metav1.Condition{{Type: "Ready", Status: metav1.ConditionTrue}}
			se.ResourceVersion = "2"
		}, true},
		{"spec changed", func(se *mcsv1beta1.ServiceExport) { se.Generation = 2 }, false},
		{"label changed", func(se *mcsv1beta1.ServiceExport) { se.Labels = map[string]string{"app": "api"} }, false},
		{"annotation added", func(se *mcsv1beta1.ServiceExport) { se.Annotations["b"] = "2" }, false},
		{"being deleted", func(se *mcsv1beta1.ServiceExport) { se.DeletionTimestamp = &now }, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			next := base.DeepCopy()
			tt.change(next)
			if got := statusOnly(base, next); got != tt.want {
				t.Errorf("statusOnly = %v, want %v", got, tt.want)
			}
		})
	}
	if statusOnly(base, "not an export") {
		t.Error("statusOnly of another kind's objects must be false")
	}
}
