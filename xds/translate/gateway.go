package translate

import (
	"fmt"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/xds/model"
)

const connectTimeout = 2 * time.Second

func typed(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic("translate: marshalling " + string(m.ProtoReflect().Descriptor().FullName()) + ": " + err.Error())
	}
	return a
}

func tcpProxy(statPrefix, cluster string) *listenerv3.Filter {
	return &listenerv3.Filter{
		Name: wellknown.TCPProxy,
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: typed(&tcpproxyv3.TcpProxy{
			StatPrefix:       statPrefix,
			ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster},
		})},
	}
}

func edsCluster(name, serviceName string) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSource(), ServiceName: serviceName},
		ConnectTimeout:       durationpb.New(connectTimeout),
		LbPolicy:             clusterv3.Cluster_ROUND_ROBIN,
		CommonLbConfig:       noPanic(),
	}
}

// tcpPorts are the ports Envoy's tcp_proxy and gRPC can carry.
func tcpPorts(s *model.Service) []model.Port {
	var out []model.Port
	for _, p := range s.Ports {
		if p.Protocol == model.TCP || p.Protocol == "" {
			out = append(out, p)
		}
	}
	return out
}

// GatewayEgress is the east-west gateway's egress side for one imported
// ClusterSetIP service: per TCP port with an allocated egress port, a
// listener the derived Service points at and a cluster whose endpoints
// are the local pods first (plain TCP) and other clusters' gateways after
// them (mTLS, SNI naming the service, each gateway's identity pinned
// through a transport socket match on the endpoint's cluster).
func GatewayEgress(local model.Local, clusters map[string]*model.Cluster, s *model.Service) (listeners []*listenerv3.Listener, cls []*clusterv3.Cluster) {
	if s.Type != model.ClusterSetIP {
		return nil, nil // headless traffic goes to pod IPs over the tunnels
	}
	for _, p := range tcpPorts(s) {
		name := OutboundCluster(s.Key, p.Port)
		c := edsCluster(name, name)
		c.OutlierDetection = outlierDetection()
		for _, id := range s.Clusters() {
			if id == local.ClusterID || clusters[id] == nil {
				continue
			}
			c.TransportSocketMatches = append(c.TransportSocketMatches, &clusterv3.Cluster_TransportSocketMatch{
				Name:            "mtls-" + id,
				Match:           &structpb.Struct{Fields: map[string]*structpb.Value{TransportSocketMatchKey: structpb.NewStringValue(id)}},
				TransportSocket: upstreamTLS(SNI(s.Key, p.Port), envoyCommonTLS([]*matcherv3.StringMatcher{exact(brokerv1.GatewaySPIFFEID(id, local.ClustersetDomain))})),
			})
		}
		cls = append(cls, c)
		if p.Egress == 0 {
			continue // the agent has not allocated a port yet
		}
		listeners = append(listeners, &listenerv3.Listener{
			Name:         EgressListener(p.Egress),
			Address:      &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: "0.0.0.0", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(p.Egress)}}}},
			FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{tcpProxy(name, name)}}},
		})
	}
	return listeners, cls
}

// GatewayIngressChains are the ingress listener's filter chains and
// clusters for one service exported from this cluster: per TCP port, a
// chain chosen by SNI that terminates mTLS (a client certificate of a
// cluster currently in the clusterset, this one or one of clusters,
// required) and proxies plain TCP to the local pods.
func GatewayIngressChains(local model.Local, clusters map[string]*model.Cluster, s *model.Service) (chains []*listenerv3.FilterChain, cls []*clusterv3.Cluster) {
	if _, exported := s.Endpoints[local.ClusterID]; !exported {
		return nil, nil
	}
	for _, p := range tcpPorts(s) {
		name := InboundCluster(s.Key, p.Port)
		cls = append(cls, edsCluster(name, name))
		chains = append(chains, &listenerv3.FilterChain{
			Name:             SNI(s.Key, p.Port),
			FilterChainMatch: &listenerv3.FilterChainMatch{ServerNames: []string{SNI(s.Key, p.Port)}},
			TransportSocket: transportSocket(transportSocketTLS, &tlsv3.DownstreamTlsContext{
				RequireClientCertificate: wrapperspb.Bool(true),
				CommonTlsContext:         envoyCommonTLS(memberIdentities(local, clusters)),
			}),
			Filters: []*listenerv3.Filter{tcpProxy(name, name)},
		})
	}
	return chains, cls
}

// GatewayIngress is the :15443 listener holding chains. It has no default
// chain: a connection whose SNI names no exported service is closed.
func GatewayIngress(local model.Local, chains []*listenerv3.FilterChain) *listenerv3.Listener {
	return &listenerv3.Listener{
		Name:    IngressListener,
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: "0.0.0.0", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(local.IngressPort)}}}},
		ListenerFilters: []*listenerv3.ListenerFilter{{
			Name:       wellknown.TlsInspector,
			ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: typed(&tlsinspectorv3.TlsInspector{})},
		}},
		FilterChains: chains,
	}
}

// Secrets are the gateway's SDS secrets: its key pair and the trust
// bundle.
func Secrets(certChainPEM, keyPEM, bundlePEM []byte) (identity, roots *tlsv3.Secret) {
	identity = &tlsv3.Secret{Name: SecretIdentity, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: certChainPEM}},
		PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: keyPEM}},
	}}}
	roots = &tlsv3.Secret{Name: SecretRoots, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: bundlePEM}},
	}}}
	return identity, roots
}

// validate runs a resource's own proto validation, naming it on failure.
func validate(name string, m interface{ ValidateAll() error }) error {
	if err := m.ValidateAll(); err != nil {
		return fmt.Errorf("resource %s is invalid: %w", name, err)
	}
	return nil
}
