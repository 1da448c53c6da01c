package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// MemberPolicy is what the hub admin approved for one member: the address
// ranges it may claim and put in its EndpointSlices, the namespaces it may
// export from, and the size limits of its records. Its name is the
// member's cluster id. `isthmusctl join` writes it with the hub admin's
// credential; members can neither read nor write it (the member Role grants
// nothing on it). The broker's allowlist admission policy reads it as its
// parameter, so a member's records are judged against it on every write.
//
// +genclient
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Namespaced,shortName=imp
// +kubebuilder:printcolumn:name="Pod CIDRs",type=string,JSONPath=`.spec.cidrs.podCIDRs`
// +kubebuilder:printcolumn:name="Service CIDRs",type=string,JSONPath=`.spec.cidrs.serviceCIDRs`
// +kubebuilder:printcolumn:name="Exports",type=integer,JSONPath=`.status.exports`
// +kubebuilder:printcolumn:name="Slices",type=integer,JSONPath=`.status.endpointSlices`
// +kubebuilder:printcolumn:name="Counted",type=date,JSONPath=`.status.observedTime`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:subresource:status
// +kubebuilder:validation:XValidation:rule="self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 63",message="metadata.name must be the member's cluster id, a DNS label"
type MemberPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec MemberPolicySpec `json:"spec"`

	// Status is the member's records on the broker as the hub's record
	// counter (`isthmus hub-quota`) last counted them; the allowlist
	// admission policy refuses a new export or EndpointSlice once a count
	// has reached its limit. Only the counter writes it.
	// +optional
	Status MemberPolicyStatus `json:"status,omitempty"`
}

// MemberPolicyStatus is what the hub's record counter last counted of one
// member's records: those in the broker namespace labelled with its
// cluster id.
type MemberPolicyStatus struct {
	// Exports is the number of the member's ExportedServices.
	// +optional
	Exports int32 `json:"exports"`
	// EndpointSlices is the number of the member's broker EndpointSlices.
	// +optional
	EndpointSlices int32 `json:"endpointSlices"`
	// ObservedTime is when the counter last wrote these counts. It is
	// refreshed at least every few minutes while the counter runs (its
	// --resync), so an old time (or none) means no counter is counting
	// and the record-count limits are not enforced.
	// +optional
	ObservedTime *metav1.Time `json:"observedTime,omitempty"`
}

// MemberPolicySpec is one member's allowlist and limits.
type MemberPolicySpec struct {
	// CIDRs, when set, are the only ranges the member may claim in its
	// Cluster record and the only ranges its EndpointSlice addresses may
	// come from (its pod CIDRs). When unset, only the rules that hold for
	// every member apply (no default route, no IPv4 prefix shorter than /8,
	// no IPv6 prefix shorter than /32): set it, with `isthmusctl join
	// --pod-cidrs --service-cidrs`.
	// +optional
	CIDRs *ApprovedCIDRs `json:"cidrs,omitempty"`

	// ExportNamespaces, when set, are the only namespaces the member may
	// export Services from. When unset, any namespace.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:MaxLength=63
	// +kubebuilder:validation:items:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	ExportNamespaces []string `json:"exportNamespaces,omitempty"`

	// Limits cap the size and number of the member's records; unset fields
	// take their defaults: 100 endpoints per slice, 16384 metadata bytes,
	// 2000 exports, 10000 EndpointSlices.
	// +optional
	Limits *MemberLimits `json:"limits,omitempty"`
}

// ApprovedCIDRs are the address ranges a member may claim. An empty list
// approves no range of that kind.
type ApprovedCIDRs struct {
	// PodCIDRs are the ranges the member's Cluster record may claim in
	// spec.podCIDRs (each claimed range must lie within one of them), and
	// the ranges every address in its EndpointSlices must lie within.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=8
	// +kubebuilder:validation:items:MaxLength=43
	// +kubebuilder:validation:items:XValidation:rule="isCIDR(self)",message="must be a CIDR such as 10.244.0.0/16"
	PodCIDRs []string `json:"podCIDRs,omitempty"`

	// ServiceCIDRs are the ranges the member's Cluster record may claim in
	// spec.serviceCIDRs.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=8
	// +kubebuilder:validation:items:MaxLength=43
	// +kubebuilder:validation:items:XValidation:rule="isCIDR(self)",message="must be a CIDR such as 10.96.0.0/16"
	ServiceCIDRs []string `json:"serviceCIDRs,omitempty"`
}

// MemberLimits cap what one member's records may hold, so one member
// cannot make every importer carry huge objects.
type MemberLimits struct {
	// MaxEndpointsPerSlice caps the endpoints in each of the member's
	// broker EndpointSlices. Kubernetes' EndpointSlice controller puts at
	// most 100 in a slice unless told otherwise.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	MaxEndpointsPerSlice *int32 `json:"maxEndpointsPerSlice,omitempty"`

	// MaxMetadataBytes caps, on each of the member's records, the summed
	// length of the keys and values of its labels and annotations, and
	// separately of an ExportedService's exportedLabels and
	// exportedAnnotations (which land on every importer's ServiceImport).
	// +optional
	// +kubebuilder:validation:Minimum=256
	// +kubebuilder:validation:Maximum=262144
	MaxMetadataBytes *int32 `json:"maxMetadataBytes,omitempty"`

	// MaxExports caps the member's ExportedServices on the broker: once
	// the hub's record counter has counted this many, creating another is
	// refused (rule max-exports). 0 lets it export nothing.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100000
	MaxExports *int32 `json:"maxExports,omitempty"`

	// MaxEndpointSlices caps the member's broker EndpointSlices, counted
	// the same way (rule max-endpoint-slices). An export has one slice per
	// address family and per maxEndpointsPerSlice endpoints.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000000
	MaxEndpointSlices *int32 `json:"maxEndpointSlices,omitempty"`
}

// Defaults of MemberLimits.
const (
	DefaultMaxEndpointsPerSlice = 100
	DefaultMaxMetadataBytes     = 16384
	// DefaultMaxExports matches the importers' default cap of imports
	// per cluster (isthmus agent --max-imports-per-cluster).
	DefaultMaxExports = 2000
	// DefaultMaxEndpointSlices leaves each of DefaultMaxExports exports
	// five slices.
	DefaultMaxEndpointSlices = 10000
)

// MemberPolicyList is a list of MemberPolicy objects.
//
// +kubebuilder:object:root=true
type MemberPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []MemberPolicy `json:"items"`
}

func init() {
	schemeBuilder.Register(func(scheme *runtime.Scheme) error {
		scheme.AddKnownTypes(SchemeGroupVersion, &MemberPolicy{}, &MemberPolicyList{})
		return nil
	})
}
