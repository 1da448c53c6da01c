// Package translate turns the clusterset model into xDS resources, in two
// flavours, as Istio does: the Envoy east-west gateway's (egress listeners
// and clusters for imported services, the mTLS ingress listener on :15443,
// SDS secrets) and the proxyless gRPC client's (one Listener per dial
// target, routes, clusters in the shapes gRPC-Go's xDS client accepts). It
// is pure: the same model always gives the same resources, which the
// golden files pin down.
package translate

import (
	"fmt"

	"github.com/isthmus-dev/isthmus/xds/model"
)

// Resource names. SNI and cluster names follow Istio's
// (outbound_.<port>_._.<host> and outbound|<port>||<host>) so Envoy
// operators recognise them.
const (
	// SecretIdentity is the SDS secret holding the gateway's key pair.
	SecretIdentity = "default"
	// SecretRoots is the SDS secret holding the clusterset's trust bundle.
	SecretRoots = "ROOTCA"
	// CertProviderInstance is the certificate_providers entry a proxyless
	// gRPC client's bootstrap must define (file_watcher); its identity
	// and roots both come from it.
	CertProviderInstance = "default"
	// IngressListener is the gateway's mTLS listener.
	IngressListener = "ingress_mtls"
	// TransportSocketMatchKey is the endpoint metadata key (under
	// envoy.transport_socket_match) naming the cluster a remote gateway
	// endpoint belongs to, so its mTLS socket pins that gateway's identity.
	TransportSocketMatchKey = "isthmus.dev/cluster"
)

// OutboundCluster is the cluster a client in this cluster sends a
// service port's traffic to (the gateway's egress, the gRPC client's
// target).
func OutboundCluster(k model.Key, port int32) string {
	return fmt.Sprintf("outbound|%d||%s", port, k.Host())
}

// InboundCluster is the gateway's cluster of the local pods of an
// exported service port; also the gRPC aggregate's local child's EDS name.
func InboundCluster(k model.Key, port int32) string {
	return fmt.Sprintf("inbound|%d||%s", port, k.Host())
}

// RemoteCluster is the proxyless gRPC aggregate's child that reaches
// other clusters' gateways in mTLS (gateway mode).
func RemoteCluster(k model.Key, port int32) string {
	return fmt.Sprintf("remote|%d||%s", port, k.Host())
}

// LocalCluster is the proxyless gRPC aggregate's child that reaches the
// local pods in plain TCP (gateway mode).
func LocalCluster(k model.Key, port int32) string {
	return fmt.Sprintf("local|%d||%s", port, k.Host())
}

// DirectCluster is the EDS name of every cluster's pods of a service
// port, by priority, for proxyless gRPC in direct mode.
func DirectCluster(k model.Key, port int32) string {
	return fmt.Sprintf("direct|%d||%s", port, k.Host())
}

// SNI is the server name a client's TLS session to a remote gateway
// carries, naming the service port it wants.
func SNI(k model.Key, port int32) string {
	return fmt.Sprintf("outbound_.%d_._.%s", port, k.Host())
}

// EgressListener is the gateway's listener for one imported service port.
func EgressListener(egress int32) string {
	return fmt.Sprintf("egress_%d", egress)
}

// GRPCListener is the Listener a proxyless client dials for a port
// (xds:///<host>:<port>); GRPCBareListener the one for xds:///<host>,
// served when a service has exactly one TCP port.
func GRPCListener(k model.Key, port int32) string { return fmt.Sprintf("%s:%d", k.Host(), port) }

// GRPCBareListener is the dial target without a port.
func GRPCBareListener(k model.Key) string { return k.Host() }

// RouteName is the RouteConfiguration of a gRPC listener.
func RouteName(listener string) string { return "route|" + listener }
