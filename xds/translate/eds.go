package translate

import (
	"net/netip"
	"sort"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/isthmus-dev/isthmus/xds/model"
)

// The priority a cluster's endpoints get, before compaction: the local
// cluster first, then the same region, then the rest (Istio's rule).
const (
	prioLocal = iota
	prioSameRegion
	prioOtherRegion
)

// locality is one cluster's endpoints in a ClusterLoadAssignment.
type locality struct {
	cluster   *model.Cluster
	clusterID string
	prio      int
	weight    uint32
	endpoints []*endpointv3.LbEndpoint
}

// rawPriority ranks cluster id relative to the local cluster.
func rawPriority(local model.Local, id string, clusters map[string]*model.Cluster) int {
	if id == local.ClusterID {
		return prioLocal
	}
	if c := clusters[id]; c != nil && c.Region != "" && c.Region == local.Region {
		return prioSameRegion
	}
	return prioOtherRegion
}

// assemble orders localities and compacts their priorities to 0..N, as
// gRPC requires (a gap is a NACK), dropping empty ones. A locality
// weight is never 0: gRPC silently drops weightless localities.
func assemble(name string, locs []locality) *endpointv3.ClusterLoadAssignment {
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: name}
	kept := locs[:0]
	for _, l := range locs {
		if len(l.endpoints) > 0 {
			kept = append(kept, l)
		}
	}
	sort.SliceStable(kept, func(i, j int) bool {
		if kept[i].prio != kept[j].prio {
			return kept[i].prio < kept[j].prio
		}
		return kept[i].clusterID < kept[j].clusterID
	})
	prio, last := -1, -1
	for _, l := range kept {
		if l.prio != last {
			prio++
			last = l.prio
		}
		loc := &corev3.Locality{SubZone: l.clusterID}
		if l.cluster != nil {
			loc.Region, loc.Zone = l.cluster.Region, l.cluster.Zone
		}
		cla.Endpoints = append(cla.Endpoints, &endpointv3.LocalityLbEndpoints{
			Locality:            loc,
			LbEndpoints:         l.endpoints,
			LoadBalancingWeight: wrapperspb.UInt32(max(l.weight, 1)),
			Priority:            uint32(prio),
		})
	}
	return cla
}

func health(ok bool) corev3.HealthStatus {
	if ok {
		return corev3.HealthStatus_HEALTHY
	}
	return corev3.HealthStatus_UNHEALTHY
}

func socketAddress(a netip.Addr, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       a.String(),
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

// podEndpoints are one cluster's pods serving port p. An endpoint that
// does not serve the port's name is left out; one seen twice (gRPC NACKs
// duplicate addresses) is kept once.
func podEndpoints(eps []model.Endpoint, p model.Port, healthy bool, seen map[netip.AddrPort]bool) ([]*endpointv3.LbEndpoint, uint32) {
	var out []*endpointv3.LbEndpoint
	var ready uint32
	for _, e := range eps {
		target, ok := e.Ports[p.Name]
		if !ok || target <= 0 {
			continue
		}
		ap := netip.AddrPortFrom(e.Address, uint16(target))
		if seen[ap] {
			continue
		}
		seen[ap] = true
		if e.Ready && healthy {
			ready++
		}
		out = append(out, &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: socketAddress(e.Address, uint32(target))}},
			HealthStatus:   health(e.Ready && healthy),
		})
	}
	return out, ready
}

// gatewayEndpoints are a remote cluster's gateways standing for its pods
// of a service: healthy only while the cluster is and has a ready pod,
// weighted by its ready pods, tagged so the cluster's transport socket
// match pins that cluster's gateway identity.
func gatewayEndpoints(c *model.Cluster, ready int, seen map[netip.AddrPort]bool) []*endpointv3.LbEndpoint {
	var out []*endpointv3.LbEndpoint
	meta := &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
		"envoy.transport_socket_match": {Fields: map[string]*structpb.Value{TransportSocketMatchKey: structpb.NewStringValue(c.ID)}},
	}}
	for _, gw := range c.Gateways {
		if seen[gw] || !gw.IsValid() {
			continue
		}
		seen[gw] = true
		out = append(out, &endpointv3.LbEndpoint{
			HostIdentifier:      &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: socketAddress(gw.Addr(), uint32(gw.Port()))}},
			HealthStatus:        health(c.Healthy && ready > 0),
			LoadBalancingWeight: wrapperspb.UInt32(uint32(max(ready, 1))),
			Metadata:            meta,
		})
	}
	return out
}

// OutboundCLA is the gateway egress cluster's assignment: local pods at
// priority 0 in plain TCP, other clusters' gateways after them by region.
func OutboundCLA(local model.Local, clusters map[string]*model.Cluster, s *model.Service, p model.Port) *endpointv3.ClusterLoadAssignment {
	return gatewayCLA(OutboundCluster(s.Key, p.Port), local, clusters, s, p, true)
}

// RemoteCLA is the remote gateways alone (the gRPC aggregate's remote
// child), by region.
func RemoteCLA(local model.Local, clusters map[string]*model.Cluster, s *model.Service, p model.Port) *endpointv3.ClusterLoadAssignment {
	return gatewayCLA(RemoteCluster(s.Key, p.Port), local, clusters, s, p, false)
}

func gatewayCLA(name string, local model.Local, clusters map[string]*model.Cluster, s *model.Service, p model.Port, withLocal bool) *endpointv3.ClusterLoadAssignment {
	seen := map[netip.AddrPort]bool{}
	var locs []locality
	for _, id := range s.Clusters() {
		prio := rawPriority(local, id, clusters)
		if id == local.ClusterID {
			if withLocal {
				eps, ready := podEndpoints(s.Endpoints[id], p, true, seen)
				locs = append(locs, locality{cluster: clusters[id], clusterID: id, prio: prio, weight: ready, endpoints: eps})
			}
			continue
		}
		c := clusters[id]
		if c == nil {
			continue // no record: nothing to reach it by
		}
		ready := s.ReadyCount(id)
		locs = append(locs, locality{cluster: c, clusterID: id, prio: prio, weight: uint32(ready), endpoints: gatewayEndpoints(c, ready, seen)})
	}
	return assemble(name, locs)
}

// InboundCLA is the local pods of a service port: the gateway ingress's
// cluster, and the gRPC aggregate's local child.
func InboundCLA(local model.Local, clusters map[string]*model.Cluster, s *model.Service, p model.Port) *endpointv3.ClusterLoadAssignment {
	eps, ready := podEndpoints(s.Endpoints[local.ClusterID], p, true, map[netip.AddrPort]bool{})
	return assemble(InboundCluster(s.Key, p.Port), []locality{{cluster: clusters[local.ClusterID], clusterID: local.ClusterID, weight: ready, endpoints: eps}})
}

// DirectCLA is every cluster's pods by priority (direct mode): the pods
// of a cluster whose Lease expired or whose tunnel is down are UNHEALTHY.
func DirectCLA(local model.Local, clusters map[string]*model.Cluster, s *model.Service, p model.Port) *endpointv3.ClusterLoadAssignment {
	seen := map[netip.AddrPort]bool{}
	var locs []locality
	for _, id := range s.Clusters() {
		healthy := id == local.ClusterID
		if c := clusters[id]; c != nil && id != local.ClusterID {
			healthy = c.Healthy
		}
		eps, ready := podEndpoints(s.Endpoints[id], p, healthy, seen)
		locs = append(locs, locality{cluster: clusters[id], clusterID: id, prio: rawPriority(local, id, clusters), weight: ready, endpoints: eps})
	}
	return assemble(DirectCluster(s.Key, p.Port), locs)
}
