// Package server serves xDS over ADS (state of the world and delta) from
// two caches: a snapshot per view for listeners, routes, clusters and
// secrets, which change when the set of services does, and one linear
// cache of ClusterLoadAssignments shared by every view, so one endpoint
// change pushes one assignment to each subscriber. It suppresses NACK
// loops (a rejected version is not re-sent until the content changes)
// and counts everything in isthmus_xds_* metrics.
package server

import (
	"fmt"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

// View is the set of resources a kind of node sees. Every node of a view
// in this cluster sees the same resources, so the snapshot is per view,
// not per node.
type View string

// The views this server builds.
const (
	// GatewayView is the Envoy east-west gateway's.
	GatewayView View = "gateway"
	// GRPCView is the proxyless gRPC client's.
	GRPCView View = "grpc"
)

// Node metadata keys a client's bootstrap sets (node.metadata).
const (
	// MetadataRole is "gateway" or "grpc". Without it, a node whose user
	// agent is gRPC gets the gRPC view and any other the gateway's.
	MetadataRole = "isthmus.dev/role"
	// MetadataCluster is the cluster id the node runs in; a node of
	// another cluster is refused (it was pointed at the wrong xDS server).
	MetadataCluster = "isthmus.dev/cluster"
)

// ViewOf says which view node gets from the server of localCluster, or
// why it gets none; the member chart's test checks its Envoy bootstrap
// with it.
func ViewOf(node *corev3.Node, localCluster string) (View, error) {
	if node == nil {
		return "", fmt.Errorf("the first request carries no node")
	}
	fields := node.GetMetadata().GetFields()
	if c := fields[MetadataCluster].GetStringValue(); c != "" && c != localCluster {
		return "", fmt.Errorf("node %q says it runs in cluster %q, but this xDS server serves cluster %q: point it at its own cluster's server", clip(node.GetId()), clip(c), localCluster)
	}
	switch r := fields[MetadataRole].GetStringValue(); r {
	case string(GatewayView):
		return GatewayView, nil
	case string(GRPCView):
		return GRPCView, nil
	case "":
		if strings.HasPrefix(strings.ToLower(node.GetUserAgentName()), "grpc") {
			return GRPCView, nil
		}
		return GatewayView, nil
	default:
		return "", fmt.Errorf("node %q has role %q in its metadata (%s); want %q or %q", clip(node.GetId()), clip(r), MetadataRole, GatewayView, GRPCView)
	}
}

// nodeHash keys the snapshot cache by view. Nodes refused by ViewOf get a
// key no snapshot has; their streams are closed by the request callback
// before that matters.
type nodeHash struct{ localCluster string }

func (h nodeHash) ID(node *corev3.Node) string {
	v, err := ViewOf(node, h.localCluster)
	if err != nil {
		return "refused"
	}
	return string(v)
}
