package crds

import (
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
)

func TestCRDs(t *testing.T) {
	broker, err := Broker()
	if err != nil {
		t.Fatal(err)
	}
	member, err := Member()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		crds    []*apiextensionsv1.CustomResourceDefinition
		name    string
		scope   apiextensionsv1.ResourceScope
		storage string
	}{
		{broker, "clusters.broker.isthmus.dev", apiextensionsv1.NamespaceScoped, "v1alpha1"},
		{broker, "exportedservices.broker.isthmus.dev", apiextensionsv1.NamespaceScoped, "v1alpha1"},
		{broker, "memberpolicies.broker.isthmus.dev", apiextensionsv1.NamespaceScoped, "v1alpha1"},
		{member, "serviceexports.multicluster.x-k8s.io", apiextensionsv1.NamespaceScoped, "v1beta1"},
		{member, "serviceimports.multicluster.x-k8s.io", apiextensionsv1.NamespaceScoped, "v1beta1"},
		{member, "clusterproperties.about.k8s.io", apiextensionsv1.ClusterScoped, "v1alpha1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var found *apiextensionsv1.CustomResourceDefinition
			for _, c := range tt.crds {
				if c.Name == tt.name {
					found = c
				}
			}
			if found == nil {
				t.Fatalf("CRD %s missing", tt.name)
			}
			if found.Spec.Scope != tt.scope {
				t.Errorf("scope %s, want %s", found.Spec.Scope, tt.scope)
			}
			var storage []string
			for _, v := range found.Spec.Versions {
				if v.Storage {
					storage = append(storage, v.Name)
				}
				if v.Schema == nil || v.Schema.OpenAPIV3Schema == nil {
					t.Errorf("version %s has no schema", v.Name)
				}
			}
			if len(storage) != 1 || storage[0] != tt.storage {
				t.Errorf("storage versions %v, want [%s]", storage, tt.storage)
			}
		})
	}
	if len(broker) != 3 || len(member) != 3 {
		t.Errorf("got %d broker and %d member CRDs, want 3 and 3", len(broker), len(member))
	}
}

func TestDecodeRejectsNonCRDs(t *testing.T) {
	for name, data := range map[string]string{
		"not yaml":     "{",
		"unknown kind": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
		"no name":      "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n",
		"stray field":  "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: x}\nspecs: {}\n",
	} {
		if _, err := decode(name, []byte(data)); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
}
