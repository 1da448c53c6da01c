package helmtest

import (
	"context"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
)

// ApplyIdentities really applies, with cfg's credential, the
// ServiceAccounts, RBAC and admission policies among the rendered objects,
// and removes them when the test ends: what a chart grants, for tests that
// then act with those identities.
func ApplyIdentities(t testing.TB, ctx context.Context, cfg *rest.Config, objs []*unstructured.Unstructured) {
	t.Helper()
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, obj := range objs {
		switch obj.GetKind() {
		case "ServiceAccount", "ClusterRole", "Role", "ClusterRoleBinding", "RoleBinding",
			"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding":
		default:
			continue
		}
		gvr := resourceOf(obj)
		var ri dynamic.ResourceInterface = dyn.Resource(gvr)
		if obj.GetNamespace() != "" {
			ri = dyn.Resource(gvr).Namespace(obj.GetNamespace())
		}
		if _, err := ri.Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: "chart-test", Force: true}); err != nil {
			t.Fatalf("applying %s %s: %v", obj.GetKind(), obj.GetName(), err)
		}
		name := obj.GetName()
		t.Cleanup(func() {
			if err := ri.Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				t.Errorf("removing %s %s: %v", gvr.Resource, name, err)
			}
		})
	}
}

// resourceOf is the resource of a ServiceAccount, an RBAC object or an
// admission policy: each kind's plural is its name in lower case and an s
// (ies for a final y).
func resourceOf(obj *unstructured.Unstructured) schema.GroupVersionResource {
	gvk := obj.GroupVersionKind()
	kind := strings.ToLower(gvk.Kind)
	if strings.HasSuffix(kind, "y") {
		return gvk.GroupVersion().WithResource(strings.TrimSuffix(kind, "y") + "ies")
	}
	return gvk.GroupVersion().WithResource(kind + "s")
}
