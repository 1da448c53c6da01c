package v1alpha1

// Identity names shared by `isthmusctl join` (which issues a member's
// intermediate CA) and the xDS server (which mints the gateways' leaves).
// Each cluster has its own SPIFFE trust domain under the clusterset's
// domain, and its intermediate may sign only names in it (an X.509 URI
// name constraint), so a compromised member cannot mint another's
// identity.
const (
	// DefaultClustersetDomain is the parent of every cluster's trust
	// domain unless an operator chooses another.
	DefaultClustersetDomain = "clusterset.isthmus"
	// RootCASecret is the broker-namespace Secret holding the clusterset
	// root (tls.crt, tls.key). No member can read Secrets on the broker.
	RootCASecret = "isthmus-root-ca"
	// TrustBundleConfigMap is the broker-namespace ConfigMap whose
	// ca.crt holds the clusterset's root certificates (PEM), the bundle
	// every member trusts; `isthmusctl join` copies it to a ConfigMap of
	// the same name in each member's MemberNamespace.
	TrustBundleConfigMap = "isthmus-trust-bundle"
	// TrustBundleKey is the key of the bundle in TrustBundleConfigMap and
	// of the bundle in IntermediateCASecret.
	TrustBundleKey = "ca.crt"
	// ClustersetDomainKey is the key in TrustBundleConfigMap naming the
	// clusterset domain, the parent of every cluster's trust domain.
	ClustersetDomainKey = "clusterset-domain"
	// MemberNamespace is the member-cluster namespace of Isthmus's own
	// objects.
	MemberNamespace = "isthmus-system"
	// IntermediateCASecret is the member Secret (in MemberNamespace)
	// holding the cluster's intermediate: tls.crt (intermediate), tls.key,
	// ca.crt (the root bundle).
	IntermediateCASecret = "isthmus-ca"
	// GatewayServiceAccount is the east-west gateway's identity in
	// MemberNamespace.
	GatewayServiceAccount = "isthmus-gateway"
	// GatewayService is the chart's Service in front of the east-west
	// gateway's pods, in MemberNamespace.
	GatewayService = "isthmus-gateway"
)

// TrustDomain is cluster's SPIFFE trust domain.
func TrustDomain(cluster, clustersetDomain string) string {
	return cluster + "." + clustersetDomain
}

// WorkloadSPIFFEID is the SPIFFE id of service account sa in namespace ns
// of cluster, in Istio's path form.
func WorkloadSPIFFEID(cluster, clustersetDomain, ns, sa string) string {
	return "spiffe://" + TrustDomain(cluster, clustersetDomain) + "/ns/" + ns + "/sa/" + sa
}

// GatewaySPIFFEID is the identity of cluster's east-west gateway.
func GatewaySPIFFEID(cluster, clustersetDomain string) string {
	return WorkloadSPIFFEID(cluster, clustersetDomain, MemberNamespace, GatewayServiceAccount)
}
