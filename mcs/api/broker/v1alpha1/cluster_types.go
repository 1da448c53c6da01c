package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Cluster is a member cluster's record on the broker: who it is, where it
// runs, how its gateway and tunnel are reached and which address ranges it
// owns. Its name is the cluster id. Only the member itself writes it.
//
// +genclient
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Namespaced,shortName=icl
// +kubebuilder:printcolumn:name="Region",type=string,JSONPath=`.spec.region`
// +kubebuilder:printcolumn:name="Zone",type=string,JSONPath=`.spec.zone`
// +kubebuilder:printcolumn:name="Heartbeat",type=string,JSONPath=`.status.conditions[?(@.type=="Heartbeat")].status`,description="whether the other members see this cluster's Lease renewed"
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Heartbeat")].reason`,description="LeaseRenewed, LeaseExpired (still imported) or Withdrawn"
// +kubebuilder:printcolumn:name="Tunnel",type=string,JSONPath=`.status.tunnel.implementation`,priority=1,description="the WireGuard device of its active gateway: kernel or userspace"
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="self.metadata.name == self.spec.clusterID",message="metadata.name must equal spec.clusterID"
type Cluster struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec ClusterSpec `json:"spec"`
	// +optional
	Status ClusterStatus `json:"status,omitempty"`
}

// ClusterSpec is what a member publishes about itself.
type ClusterSpec struct {
	// ClusterID is the member's cluster id (the cluster.clusterset.k8s.io
	// ClusterProperty): an RFC 1123 DNS label, unique in the clusterset.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="clusterID is immutable"
	ClusterID string `json:"clusterID"`

	// Region is the member's topology.kubernetes.io/region; failover prefers
	// clusters in the same region.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	Region string `json:"region,omitempty"`

	// Zone is the member's topology.kubernetes.io/zone.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	Zone string `json:"zone,omitempty"`

	// Gateways are the addresses at which the member's east-west gateway
	// accepts mTLS traffic from other clusters.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=16
	Gateways []GatewayAddress `json:"gateways,omitempty"`

	// WireGuard is how other clusters' gateway nodes reach this one's tunnel.
	// +optional
	WireGuard *WireGuardPeer `json:"wireGuard,omitempty"`

	// PodCIDRs are the member's pod address ranges. Clusters routed through
	// the tunnels must not overlap.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=8
	// +kubebuilder:validation:items:XValidation:rule="isCIDR(self)",message="must be a CIDR such as 10.244.0.0/16"
	// +kubebuilder:validation:items:MaxLength=43
	PodCIDRs []string `json:"podCIDRs,omitempty"`

	// ServiceCIDRs are the member's Service address ranges.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=8
	// +kubebuilder:validation:items:XValidation:rule="isCIDR(self)",message="must be a CIDR such as 10.96.0.0/16"
	// +kubebuilder:validation:items:MaxLength=43
	ServiceCIDRs []string `json:"serviceCIDRs,omitempty"`

	// Versions maps a component (agent, dns, xds, tunnel, kubernetes) to
	// the version it runs, for skew checks and support.
	// +optional
	// +kubebuilder:validation:MaxProperties=16
	Versions map[string]string `json:"versions,omitempty"`
}

// GatewayAddress is one reachable address of an east-west gateway.
type GatewayAddress struct {
	// Address is an IPv4 or IPv6 address.
	// +kubebuilder:validation:MaxLength=45
	// +kubebuilder:validation:XValidation:rule="isIP(self)",message="must be an IP address"
	Address string `json:"address"`

	// Port is the gateway's mTLS ingress port.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port int32 `json:"port"`
}

// WireGuardPeer is the public half of a member's WireGuard tunnel.
type WireGuardPeer struct {
	// PublicKey is the device's Curve25519 public key, base64 as wg(8)
	// prints it.
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$`
	PublicKey string `json:"publicKey"`

	// Endpoint is the UDP address (ip:port, [ipv6]:port) other gateways send
	// to.
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:XValidation:rule="self.matches('^\\\\[[0-9a-fA-F:.]+\\\\]:[0-9]{1,5}$') || self.matches('^[0-9.]+:[0-9]{1,5}$')",message="must be ip:port or [ipv6]:port"
	Endpoint string `json:"endpoint"`
}

// ClusterStatus is what the clusterset observes about a member.
type ClusterStatus struct {
	// Conditions: Heartbeat (whether the other members see the member's
	// Lease renewed, written by them; `kubectl get clusters` shows it) and
	// others that say what an operator should act on.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// Tunnel is the member's WireGuard tunnel as its active gateway sees
	// it, one entry per other cluster. The tunnel role writes it (field
	// manager isthmus-tunnel); the xDS server and the agent read it to stop
	// sending traffic to a cluster whose tunnel is down.
	// +optional
	Tunnel *TunnelStatus `json:"tunnel,omitempty"`
}

// TunnelStatus is the state of a member's WireGuard device and of its
// tunnel to every other cluster.
type TunnelStatus struct {
	// Implementation is the WireGuard device in use: kernel or userspace.
	// +optional
	// +kubebuilder:validation:Enum=kernel;userspace
	Implementation string `json:"implementation,omitempty"`

	// Offload says whether TUN segmentation offload was negotiated (the
	// userspace device is several times faster with it).
	// +optional
	Offload bool `json:"offload,omitempty"`

	// KeyGeneration counts rotations of the cluster's WireGuard key; it
	// rises when `isthmusctl tunnel rotate-key` runs.
	// +optional
	// +kubebuilder:validation:Minimum=0
	KeyGeneration int64 `json:"keyGeneration,omitempty"`

	// Peers is the tunnel to each other cluster.
	// +optional
	// +listType=map
	// +listMapKey=cluster
	// +kubebuilder:validation:MaxItems=1024
	Peers []TunnelPeerStatus `json:"peers,omitempty"`
}

// TunnelPeerState is how the tunnel to one other cluster fares.
// +kubebuilder:validation:Enum=Connected;Connecting;Error;Conflict
type TunnelPeerState string

const (
	// TunnelPeerConnected: a recent handshake and answered probes.
	TunnelPeerConnected TunnelPeerState = "Connected"
	// TunnelPeerConnecting: configured, first handshake still awaited.
	TunnelPeerConnecting TunnelPeerState = "Connecting"
	// TunnelPeerError: no handshake or no probe answer in time; traffic
	// to that cluster would be lost.
	TunnelPeerError TunnelPeerState = "Error"
	// TunnelPeerConflict: not peered (overlapping CIDRs, a duplicate key,
	// an unusable record); Reason and Message say which.
	TunnelPeerConflict TunnelPeerState = "Conflict"
)

// TunnelPeerStatus is the tunnel from this member to one other cluster.
type TunnelPeerStatus struct {
	// Cluster is the other cluster's id.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	Cluster string `json:"cluster"`

	// State is Connected, Connecting, Error or Conflict.
	State TunnelPeerState `json:"state"`

	// Reason is a CamelCase word for State, for tools.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	Reason string `json:"reason,omitempty"`

	// Message says what an operator should check.
	// +optional
	// +kubebuilder:validation:MaxLength=512
	Message string `json:"message,omitempty"`

	// Endpoint is the peer's UDP endpoint the device currently uses (it
	// roams when another gateway replica takes over).
	// +optional
	// +kubebuilder:validation:MaxLength=64
	Endpoint string `json:"endpoint,omitempty"`

	// LastHandshakeTime is the last completed WireGuard handshake.
	// +optional
	LastHandshakeTime *metav1.Time `json:"lastHandshakeTime,omitempty"`

	// RTTMicros is the last round-trip time of the probe over the tunnel,
	// in microseconds.
	// +optional
	// +kubebuilder:validation:Minimum=0
	RTTMicros int64 `json:"rttMicros,omitempty"`
}

// ClusterList is a list of Cluster records.
//
// +kubebuilder:object:root=true
type ClusterList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Cluster `json:"items"`
}
