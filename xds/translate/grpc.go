package translate

import (
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	aggregatev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/clusters/aggregate/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/types/known/wrapperspb"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/xds/model"
)

// GRPC is what a proxyless gRPC client needs for one imported service: a
// Listener per dial target (its name must equal the target, or gRPC waits
// 15 s and fails), a RouteConfiguration whose virtual host matches the
// target, and the clusters. The shapes avoid everything gRPC-Go NACKs or
// ignores (research/xds.md §1.5): no transport_socket_matches, weights on
// every locality, contiguous priorities, certificates from a provider
// instance rather than SDS, both SAN fields.
//
// Through gateways (gateway mode, ClusterSetIP) the outbound cluster is an
// aggregate (gRFC A37) of the local pods in plain TCP, then the other
// clusters' gateways in mTLS: gRPC concatenates the children's priorities,
// so local stays first. Otherwise (direct mode, or headless services) one
// cluster holds every cluster's pods by priority, in mTLS when the service
// asks for it.
func GRPC(local model.Local, clusters map[string]*model.Cluster, s *model.Service) (listeners []*listenerv3.Listener, routes []*routev3.RouteConfiguration, cls []*clusterv3.Cluster) {
	ports := tcpPorts(s)
	for _, p := range ports {
		names := []string{GRPCListener(s.Key, p.Port)}
		if len(ports) == 1 {
			names = append(names, GRPCBareListener(s.Key))
		}
		out := OutboundCluster(s.Key, p.Port)
		for _, ln := range names {
			listeners = append(listeners, apiListener(ln))
			routes = append(routes, &routev3.RouteConfiguration{
				Name: RouteName(ln),
				VirtualHosts: []*routev3.VirtualHost{{
					Name:    ln,
					Domains: []string{ln},
					Routes: []*routev3.Route{{
						Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: ""}},
						Action: &routev3.Route_Route{Route: &routev3.RouteAction{
							ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: out},
							// An RPC caught on a connection to a backend that dies is
							// retried (on the next priority once the first is gone),
							// as Istio retries by default.
							RetryPolicy: &routev3.RetryPolicy{RetryOn: "unavailable", NumRetries: wrapperspb.UInt32(2)},
						}},
					}},
				}},
			})
		}
		if local.Mode == model.Gateway && s.Type == model.ClusterSetIP {
			cls = append(cls, aggregate(out, LocalCluster(s.Key, p.Port), RemoteCluster(s.Key, p.Port)))
			lc := edsCluster(LocalCluster(s.Key, p.Port), InboundCluster(s.Key, p.Port))
			lc.OutlierDetection = outlierDetection()
			rc := edsCluster(RemoteCluster(s.Key, p.Port), RemoteCluster(s.Key, p.Port))
			rc.OutlierDetection = outlierDetection()
			var ids []*matcherv3.StringMatcher
			for _, id := range s.Clusters() {
				if id != local.ClusterID {
					ids = append(ids, exact(brokerv1.GatewaySPIFFEID(id, local.ClustersetDomain)))
				}
			}
			rc.TransportSocket = upstreamTLS(SNI(s.Key, p.Port), grpcCommonTLS(ids))
			cls = append(cls, lc, rc)
			continue
		}
		c := edsCluster(out, DirectCluster(s.Key, p.Port))
		c.OutlierDetection = outlierDetection()
		if s.MTLS {
			// Namespace sameness: the service's pods may run as any
			// service account of its namespace in any exporting cluster.
			var ids []*matcherv3.StringMatcher
			for _, id := range s.Clusters() {
				ids = append(ids, prefix(brokerv1.WorkloadSPIFFEID(id, local.ClustersetDomain, s.Key.Namespace, "")))
			}
			c.TransportSocket = upstreamTLS("", grpcCommonTLS(ids))
		}
		cls = append(cls, c)
	}
	return listeners, routes, cls
}

// apiListener is a client-side listener: an HTTP connection manager that
// takes its routes from RDS over ADS.
func apiListener(name string) *listenerv3.Listener {
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: name,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: RouteName(name),
		}},
		HttpFilters: []*hcmv3.HttpFilter{{
			Name:       wellknown.Router,
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: typed(&routerv3.Router{})},
		}},
	}
	return &listenerv3.Listener{Name: name, ApiListener: &listenerv3.ApiListener{ApiListener: typed(hcm)}}
}

// aggregate leaves lb_policy at its default: gRPC-Go NACKs
// CLUSTER_PROVIDED (which Envoy would want); only gRPC gets this cluster.
func aggregate(name string, children ...string) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name: name,
		ClusterDiscoveryType: &clusterv3.Cluster_ClusterType{ClusterType: &clusterv3.Cluster_CustomClusterType{
			Name:        "envoy.clusters.aggregate",
			TypedConfig: typed(&aggregatev3.ClusterConfig{Clusters: children}),
		}},
	}
}
