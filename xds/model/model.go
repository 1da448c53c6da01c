// Package model is the clusterset as the xDS server sees it: services with
// their ports and per-cluster endpoints, and the member clusters with their
// locality, gateways and health. The source fills it from Kubernetes; the
// translator turns it into Envoy and gRPC resources. It holds plain values
// only, so translation tests need no Kubernetes at all.
package model

import (
	"net/netip"
	"sort"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// ServiceType mirrors the MCS ServiceImport type.
type ServiceType string

// The two MCS service types.
const (
	ClusterSetIP ServiceType = "ClusterSetIP"
	Headless     ServiceType = "Headless"
)

// Protocol is a service port's transport protocol.
type Protocol string

// Protocols as Kubernetes names them.
const (
	TCP  Protocol = "TCP"
	UDP  Protocol = "UDP"
	SCTP Protocol = "SCTP"
)

// Key names a service in the clusterset.
type Key struct {
	Namespace, Name string
}

func (k Key) String() string { return k.Namespace + "/" + k.Name }

// Host is the service's clusterset DNS name, the name gRPC clients dial
// and the base of every resource name.
func (k Key) Host() string { return k.Name + "." + k.Namespace + ".svc.clusterset.local" }

// Port is one port of an imported service.
type Port struct {
	Name     string
	Protocol Protocol
	Port     int32
	// Egress is the local gateway's egress port for it (gateway mode),
	// allocated by the agent; 0 when none is allocated.
	Egress int32
}

// Endpoint is one address serving a service in one cluster.
type Endpoint struct {
	Address netip.Addr
	// Ports maps the service's port name to the port the endpoint listens
	// on (the target port).
	Ports map[string]int32
	Ready bool
	Zone  string
}

// Service is one imported service with everything the translation needs.
type Service struct {
	Key  Key
	Type ServiceType
	// Ports are the merged ServiceImport ports, sorted by port number.
	Ports []Port
	// Endpoints per exporting cluster id. The local cluster's endpoints
	// are under its own id.
	Endpoints map[string][]Endpoint
	// MTLS asks proxyless gRPC clients in direct mode to speak mTLS to the
	// service's pods (the ServiceImport annotation isthmus.dev/upstream-tls:
	// mtls); through gateways traffic between clusters is always mTLS.
	MTLS bool
}

// Clusters lists the exporting clusters in a stable order.
func (s *Service) Clusters() []string {
	out := make([]string, 0, len(s.Endpoints))
	for c := range s.Endpoints {
		out = append(out, c)
	}
	sort.Strings(out)
	return out
}

// ReadyCount is the number of ready endpoints of the service in cluster.
func (s *Service) ReadyCount(cluster string) int {
	n := 0
	for _, e := range s.Endpoints[cluster] {
		if e.Ready {
			n++
		}
	}
	return n
}

// Cluster is a member cluster as its broker record and Lease describe it.
type Cluster struct {
	ID     string
	Region string
	Zone   string
	// Gateways are the east-west gateway's mTLS ingress addresses.
	Gateways []netip.AddrPort
	// Healthy is false when the cluster's Lease has expired or the local
	// tunnel to it is down; Reason says which, for logs and debug output.
	Healthy bool
	Reason  string
}

// Mode is how traffic crosses clusters: the broker API's data-plane enum,
// so the agent and the xDS server cannot spell it differently.
type Mode = brokerv1.Dataplane

// The two data-plane modes.
const (
	// Direct: pod IPs are routed between clusters over the tunnels.
	Direct = brokerv1.DataplaneDirect
	// Gateway: other clusters are reached through their east-west gateway.
	Gateway = brokerv1.DataplaneGateway
)

// Local describes the cluster this xDS server serves.
type Local struct {
	ClusterID string
	Region    string
	Zone      string
	// ClustersetDomain is the parent of every cluster's SPIFFE trust
	// domain (mcs/api/broker/v1alpha1.TrustDomain).
	ClustersetDomain string
	Mode             Mode
	// IngressPort is the gateway's mTLS port (15443).
	IngressPort int32
}
