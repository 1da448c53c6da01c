package v1alpha1

import (
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
)

// Well-known names on the broker. The MCS labels are mcs-api's own.
const (
	// DefaultBrokerNamespace is the broker namespace unless an operator
	// chooses another.
	DefaultBrokerNamespace = "isthmus-broker"

	// LabelServiceName names the exported Service on its broker records
	// and EndpointSlices.
	LabelServiceName = mcsv1beta1.LabelServiceName
	// LabelSourceCluster names the cluster that owns a broker record. The
	// broker's admission policy compares it with the writer's identity.
	LabelSourceCluster = mcsv1beta1.LabelSourceCluster
	// LabelServiceNamespace names the exported Service's namespace on its
	// broker records and EndpointSlices (there is no MCS label for it).
	LabelServiceNamespace = "broker.isthmus.dev/service-namespace"
	// LabelManagedBy is the EndpointSlice label naming its controller.
	LabelManagedBy = "endpointslice.kubernetes.io/managed-by"
	// ManagedBy is the value of LabelManagedBy on slices Isthmus writes.
	ManagedBy = "isthmus.dev"

	// MemberServiceAccountPrefix starts the name of every member's identity
	// (a ServiceAccount in the broker namespace) on the broker.
	MemberServiceAccountPrefix = "isthmus-member-"
	// XDSServiceAccountPrefix starts the name of a member's xDS server
	// identity on the broker: read-only.
	XDSServiceAccountPrefix = "isthmus-xds-"
	// TunnelServiceAccountPrefix starts the name of a member's tunnel
	// identity on the broker: it may write only its own Cluster record's
	// wireGuard field and its tunnel status.
	TunnelServiceAccountPrefix = "isthmus-tunnel-"
	// LeasePrefix starts the name of every member's heartbeat Lease.
	LeasePrefix = "cluster-"
)

// The Heartbeat condition of a Cluster's status says whether the cluster's
// Lease is being renewed, as the other members observe it. It is the only
// part of another member's record a member may write.
const (
	ClusterConditionHeartbeat = "Heartbeat"
	// ReasonLeaseRenewed: the Lease is renewed in time (status True).
	ReasonLeaseRenewed = "LeaseRenewed"
	// ReasonLeaseExpired: the Lease lapsed; exports still imported (False).
	ReasonLeaseExpired = "LeaseExpired"
	// ReasonWithdrawn: the Lease lapsed long ago; exports withdrawn (False).
	ReasonWithdrawn = "Withdrawn"
)

// ExportedServiceName is the name of the ExportedService record of
// namespace/name exported from cluster. Each part is a DNS label, so the
// dotted form cannot collide.
func ExportedServiceName(cluster, namespace, name string) string {
	return name + "." + namespace + "." + cluster
}

// LeaseName is the name of a member's heartbeat Lease on the broker.
func LeaseName(cluster string) string { return LeasePrefix + cluster }

// MemberServiceAccount is the name of a member's identity on the broker.
func MemberServiceAccount(cluster string) string { return MemberServiceAccountPrefix + cluster }

// XDSServiceAccount is the name of a member's xDS server identity on the
// broker.
func XDSServiceAccount(cluster string) string { return XDSServiceAccountPrefix + cluster }

// TunnelServiceAccount is the name of a member's tunnel identity on the
// broker.
func TunnelServiceAccount(cluster string) string { return TunnelServiceAccountPrefix + cluster }
