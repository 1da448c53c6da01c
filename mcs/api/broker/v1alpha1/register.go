package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupName is the API group of the broker records.
const GroupName = "broker.isthmus.dev"

// SchemeGroupVersion is the group and version of the types in this package.
var SchemeGroupVersion = schema.GroupVersion{Group: GroupName, Version: "v1alpha1"}

var (
	schemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)
	// AddToScheme registers the broker types with a scheme.
	AddToScheme = schemeBuilder.AddToScheme
)

// The broker's resources, spelled once.
var (
	ClustersResource         = SchemeGroupVersion.WithResource("clusters")
	ExportedServicesResource = SchemeGroupVersion.WithResource("exportedservices")
	MemberPoliciesResource   = SchemeGroupVersion.WithResource("memberpolicies")
)

// Resource returns the group-qualified resource for a plural resource name.
func Resource(resource string) schema.GroupResource {
	return SchemeGroupVersion.WithResource(resource).GroupResource()
}

func addKnownTypes(scheme *runtime.Scheme) error {
	scheme.AddKnownTypes(SchemeGroupVersion,
		&Cluster{}, &ClusterList{},
		&ExportedService{}, &ExportedServiceList{},
	)
	metav1.AddToGroupVersion(scheme, SchemeGroupVersion)
	return nil
}
