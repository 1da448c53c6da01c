package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ExportedService is one member's export of one Service: the Service's
// shape as that member sees it. Importers merge the records of every
// exporting cluster (oldest export wins a conflict). Its name comes from
// ExportedServiceName, and only the source cluster writes it.
//
// +genclient
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Namespaced,shortName=iexp
// +kubebuilder:printcolumn:name="Cluster",type=string,JSONPath=`.spec.sourceCluster`
// +kubebuilder:printcolumn:name="Namespace",type=string,JSONPath=`.spec.serviceNamespace`
// +kubebuilder:printcolumn:name="Service",type=string,JSONPath=`.spec.serviceName`
// +kubebuilder:printcolumn:name="Type",type=string,JSONPath=`.spec.type`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="self.metadata.name == self.spec.serviceName + '.' + self.spec.serviceNamespace + '.' + self.spec.sourceCluster",message="metadata.name must be <serviceName>.<serviceNamespace>.<sourceCluster>"
type ExportedService struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec ExportedServiceSpec `json:"spec"`
	// +optional
	Status ExportedServiceStatus `json:"status,omitempty"`
}

// ServiceType is how importers expose an exported service.
// +kubebuilder:validation:Enum=ClusterSetIP;Headless
type ServiceType string

const (
	// ClusterSetIP services get one virtual IP in every importing cluster.
	ClusterSetIP ServiceType = "ClusterSetIP"
	// Headless services resolve to their endpoints' addresses.
	Headless ServiceType = "Headless"
)

// ExportedServiceSpec is the exported Service as its source cluster sees it.
// +kubebuilder:validation:XValidation:rule="self.type == 'ClusterSetIP' || !has(self.sessionAffinityConfig)",message="sessionAffinityConfig applies to ClusterSetIP services only"
type ExportedServiceSpec struct {
	// SourceCluster is the id of the exporting cluster.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="sourceCluster is immutable"
	SourceCluster string `json:"sourceCluster"`

	// ServiceNamespace is the namespace of the exported Service.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="serviceNamespace is immutable"
	ServiceNamespace string `json:"serviceNamespace"`

	// ServiceName is the name of the exported Service.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z]([-a-z0-9]*[a-z0-9])?$`
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="serviceName is immutable"
	ServiceName string `json:"serviceName"`

	// Type is ClusterSetIP for a Service with a cluster IP and Headless for
	// one without.
	Type ServiceType `json:"type"`

	// Ports are the Service's ports.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=100
	Ports []ServicePort `json:"ports,omitempty"`

	// SessionAffinity is the Service's session affinity.
	// +optional
	// +kubebuilder:validation:Enum=ClientIP;None
	SessionAffinity corev1.ServiceAffinity `json:"sessionAffinity,omitempty"`

	// SessionAffinityConfig is the Service's session affinity configuration.
	// +optional
	SessionAffinityConfig *corev1.SessionAffinityConfig `json:"sessionAffinityConfig,omitempty"`

	// IPFamilies are the Service's IP families, in its order.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=2
	// +kubebuilder:validation:items:Enum=IPv4;IPv6
	IPFamilies []corev1.IPFamily `json:"ipFamilies,omitempty"`

	// InternalTrafficPolicy is the Service's internal traffic policy.
	// +optional
	// +kubebuilder:validation:Enum=Cluster;Local
	InternalTrafficPolicy *corev1.ServiceInternalTrafficPolicy `json:"internalTrafficPolicy,omitempty"`

	// TrafficDistribution is the Service's traffic distribution preference.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	TrafficDistribution *string `json:"trafficDistribution,omitempty"`

	// ExportedLabels are the labels the ServiceExport asks to export.
	// +optional
	// +kubebuilder:validation:MaxProperties=64
	ExportedLabels map[string]string `json:"exportedLabels,omitempty"`

	// ExportedAnnotations are the annotations the ServiceExport asks to
	// export.
	// +optional
	// +kubebuilder:validation:MaxProperties=64
	ExportedAnnotations map[string]string `json:"exportedAnnotations,omitempty"`

	// ExportCreationTimestamp is the ServiceExport's creation time in its
	// cluster: the oldest export wins a conflict.
	ExportCreationTimestamp metav1.Time `json:"exportCreationTimestamp"`
}

// ServicePort is one port of an exported service, as in a ServiceImport.
type ServicePort struct {
	// Name is the port's name, required when a Service has several ports.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$`
	Name string `json:"name,omitempty"`

	// Protocol is TCP, UDP or SCTP.
	// +kubebuilder:default=TCP
	// +kubebuilder:validation:Enum=TCP;UDP;SCTP
	Protocol corev1.Protocol `json:"protocol"`

	// AppProtocol is the port's application protocol.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	AppProtocol *string `json:"appProtocol,omitempty"`

	// Port is the Service port number.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port int32 `json:"port"`
}

// ExportedServiceStatus is what the clusterset observes about an export.
type ExportedServiceStatus struct {
	// Conditions say what an operator should act on.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// ExportedServiceList is a list of ExportedService records.
//
// +kubebuilder:object:root=true
type ExportedServiceList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ExportedService `json:"items"`
}
