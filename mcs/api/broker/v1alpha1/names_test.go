package v1alpha1

import (
	"testing"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation"
)

func TestNames(t *testing.T) {
	tests := []struct {
		cluster, ns, name string
		want              string
	}{
		{"east", "demo", "web", "web.demo.east"},
		// Dashes cannot make two exports collide: the dots separate labels.
		{"east", "a-b", "c", "c.a-b.east"},
		{"east", "a", "b-c", "b-c.a.east"},
	}
	seen := map[string]bool{}
	for _, tt := range tests {
		got := ExportedServiceName(tt.cluster, tt.ns, tt.name)
		if got != tt.want {
			t.Errorf("ExportedServiceName(%q, %q, %q) = %q, want %q", tt.cluster, tt.ns, tt.name, got, tt.want)
		}
		if errs := validation.IsDNS1123Subdomain(got); len(errs) > 0 {
			t.Errorf("%q is not a valid object name: %v", got, errs)
		}
		if seen[got] {
			t.Errorf("%q produced twice", got)
		}
		seen[got] = true
	}
	long := "a123456789b123456789c123456789d123456789e123456789f123456789abc" // 63, the longest label
	if errs := validation.IsDNS1123Subdomain(ExportedServiceName(long, long, long)); len(errs) > 0 {
		t.Errorf("longest export name invalid: %v", errs)
	}
	if got := LeaseName("east"); got != "cluster-east" {
		t.Errorf("LeaseName = %q", got)
	}
	if got := MemberServiceAccount("east"); got != "isthmus-member-east" {
		t.Errorf("MemberServiceAccount = %q", got)
	}
}

func TestScheme(t *testing.T) {
	s := runtime.NewScheme()
	if err := AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	for _, kind := range []string{"Cluster", "ClusterList", "ExportedService", "ExportedServiceList"} {
		if !s.Recognizes(SchemeGroupVersion.WithKind(kind)) {
			t.Errorf("scheme does not know %s", kind)
		}
	}
	if got := Resource("clusters").String(); got != "clusters.broker.isthmus.dev" {
		t.Errorf("Resource = %q", got)
	}
}
