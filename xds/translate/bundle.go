package translate

import (
	"fmt"
	"sort"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/isthmus-dev/isthmus/xds/model"
)

// Bundle is everything one service contributes to the views and to the
// shared endpoint assignments. Keeping it per service lets the server
// recompute only the services a change touches.
type Bundle struct {
	// The Envoy gateway's view.
	GatewayListeners []*listenerv3.Listener
	GatewayClusters  []*clusterv3.Cluster
	IngressChains    []*listenerv3.FilterChain
	// The proxyless gRPC view.
	GRPCListeners []*listenerv3.Listener
	GRPCRoutes    []*routev3.RouteConfiguration
	GRPCClusters  []*clusterv3.Cluster
	// Endpoints are the assignments the clusters above name, by name.
	Endpoints map[string]*endpointv3.ClusterLoadAssignment
}

// ForService translates one service and checks every resource with its
// own proto validation.
func ForService(local model.Local, clusters map[string]*model.Cluster, s *model.Service) (*Bundle, error) {
	b := &Bundle{Endpoints: map[string]*endpointv3.ClusterLoadAssignment{}}
	b.GatewayListeners, b.GatewayClusters = GatewayEgress(local, clusters, s)
	var inbound []*clusterv3.Cluster
	b.IngressChains, inbound = GatewayIngressChains(local, clusters, s)
	b.GatewayClusters = append(b.GatewayClusters, inbound...)
	b.GRPCListeners, b.GRPCRoutes, b.GRPCClusters = GRPC(local, clusters, s)
	for _, p := range tcpPorts(s) {
		viaGateways := local.Mode == model.Gateway && s.Type == model.ClusterSetIP
		if s.Type == model.ClusterSetIP {
			b.add(OutboundCLA(local, clusters, s, p))
		}
		if _, exported := s.Endpoints[local.ClusterID]; exported || viaGateways {
			b.add(InboundCLA(local, clusters, s, p))
		}
		if viaGateways {
			b.add(RemoteCLA(local, clusters, s, p))
		} else {
			b.add(DirectCLA(local, clusters, s, p))
		}
	}
	if err := b.validate(); err != nil {
		return nil, fmt.Errorf("translating service %s: %w", s.Key, err)
	}
	return b, nil
}

func (b *Bundle) add(cla *endpointv3.ClusterLoadAssignment) { b.Endpoints[cla.ClusterName] = cla }

func (b *Bundle) validate() error {
	for _, l := range append(append([]*listenerv3.Listener{}, b.GatewayListeners...), b.GRPCListeners...) {
		if err := validate(l.Name, l); err != nil {
			return err
		}
	}
	for _, c := range append(append([]*clusterv3.Cluster{}, b.GatewayClusters...), b.GRPCClusters...) {
		if err := validate(c.Name, c); err != nil {
			return err
		}
	}
	for _, fc := range b.IngressChains {
		if err := validate(fc.Name, fc); err != nil {
			return err
		}
	}
	for _, r := range b.GRPCRoutes {
		if err := validate(r.Name, r); err != nil {
			return err
		}
	}
	for n, e := range b.Endpoints {
		if err := validate(n, e); err != nil {
			return err
		}
	}
	return nil
}

// SameShape reports whether two bundles have equal listeners, routes and
// clusters, so that an endpoint-only change can keep the old ones (and the
// views stay as they are).
func SameShape(a, b *Bundle) bool {
	if a == nil || b == nil {
		return a == b
	}
	return equalAll(a.GatewayListeners, b.GatewayListeners) && equalAll(a.GatewayClusters, b.GatewayClusters) &&
		equalAll(a.IngressChains, b.IngressChains) && equalAll(a.GRPCListeners, b.GRPCListeners) &&
		equalAll(a.GRPCRoutes, b.GRPCRoutes) && equalAll(a.GRPCClusters, b.GRPCClusters)
}

func equalAll[T proto.Message](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !proto.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

// GatewayResources is the Envoy gateway's view: every service's egress
// listeners and clusters, the ingress listener with every local export's
// chain (sorted by name, so the listener is stable), and the SDS secrets.
func GatewayResources(local model.Local, bundles []*Bundle, identity, roots *tlsv3.Secret) (map[resource.Type][]types.Resource, error) {
	out := map[resource.Type][]types.Resource{resource.ListenerType: nil, resource.ClusterType: nil, resource.SecretType: nil}
	var chains []*listenerv3.FilterChain
	for _, b := range bundles {
		for _, l := range b.GatewayListeners {
			out[resource.ListenerType] = append(out[resource.ListenerType], l)
		}
		for _, c := range b.GatewayClusters {
			out[resource.ClusterType] = append(out[resource.ClusterType], c)
		}
		chains = append(chains, b.IngressChains...)
	}
	// Envoy refuses a listener without filter chains, so a cluster that
	// exports nothing has no ingress listener (and nothing listens).
	if len(chains) > 0 {
		sort.Slice(chains, func(i, j int) bool { return chains[i].Name < chains[j].Name })
		ingress := GatewayIngress(local, chains)
		if err := validate(ingress.Name, ingress); err != nil {
			return nil, err
		}
		out[resource.ListenerType] = append(out[resource.ListenerType], ingress)
	}
	if identity != nil && roots != nil {
		out[resource.SecretType] = []types.Resource{identity, roots}
	}
	return out, nil
}

// GRPCResources is the proxyless gRPC view.
func GRPCResources(bundles []*Bundle) map[resource.Type][]types.Resource {
	out := map[resource.Type][]types.Resource{resource.ListenerType: nil, resource.RouteType: nil, resource.ClusterType: nil}
	for _, b := range bundles {
		for _, l := range b.GRPCListeners {
			out[resource.ListenerType] = append(out[resource.ListenerType], l)
		}
		for _, r := range b.GRPCRoutes {
			out[resource.RouteType] = append(out[resource.RouteType], r)
		}
		for _, c := range b.GRPCClusters {
			out[resource.ClusterType] = append(out[resource.ClusterType], c)
		}
	}
	return out
}
