package translate

import (
	"sort"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/isthmus-dev/isthmus/xds/model"
)

const transportSocketTLS = "envoy.transport_sockets.tls"

// adsSource is "fetch over the same ADS stream", for SDS secrets.
func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		ResourceApiVersion:    corev3.ApiVersion_V3,
	}
}

// sanMatchers sets both SAN fields: gRPC-Go reads only the deprecated
// match_subject_alt_names, Envoy only the typed one when it is present
// (research/xds.md §1.5 #10). Setting just one would leave one consumer
// accepting any identity.
func sanMatchers(ms []*matcherv3.StringMatcher) (legacy []*matcherv3.StringMatcher, typed []*tlsv3.SubjectAltNameMatcher) {
	for _, m := range ms {
		legacy = append(legacy, m)
		typed = append(typed, &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_URI, Matcher: m})
	}
	return legacy, typed
}

func exact(s string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: s}}
}

func prefix(s string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: s}}
}

// memberIdentities match the SPIFFE ids of the clusters currently in the
// clusterset, and of no other: spiffe://<cluster-id>.<domain>/... for
// local and each Cluster record. A member evicted from the clusterset
// (its record removed) still holds an intermediate that chains to the
// root, but that intermediate's name constraint lets it sign only its own
// trust domain, which no longer matches.
func memberIdentities(local model.Local, clusters map[string]*model.Cluster) []*matcherv3.StringMatcher {
	ids := []string{local.ClusterID}
	for id := range clusters {
		if id != local.ClusterID {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	out := make([]*matcherv3.StringMatcher, 0, len(ids))
	for _, id := range ids {
		out = append(out, prefix("spiffe://"+id+"."+local.ClustersetDomain+"/"))
	}
	return out
}

// envoyCommonTLS takes the key pair and roots from SDS over ADS.
func envoyCommonTLS(peers []*matcherv3.StringMatcher) *tlsv3.CommonTlsContext {
	legacy, typed := sanMatchers(peers)
	return &tlsv3.CommonTlsContext{
		TlsParams:                      &tlsv3.TlsParameters{TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_3},
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: SecretIdentity, SdsConfig: adsSource()}},
		ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
			//lint:ignore SA1019 deliberate: see sanMatchers
			DefaultValidationContext:         &tlsv3.CertificateValidationContext{MatchSubjectAltNames: legacy, MatchTypedSubjectAltNames: typed},
			ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: SecretRoots, SdsConfig: adsSource()},
		}},
	}
}

// grpcCommonTLS takes the key pair and roots from the client's
// file_watcher certificate provider: gRPC NACKs SDS.
func grpcCommonTLS(peers []*matcherv3.StringMatcher) *tlsv3.CommonTlsContext {
	legacy, typed := sanMatchers(peers)
	return &tlsv3.CommonTlsContext{
		TlsCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{InstanceName: CertProviderInstance, CertificateName: SecretIdentity},
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			CaCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{InstanceName: CertProviderInstance, CertificateName: SecretRoots},
			//lint:ignore SA1019 deliberate: see sanMatchers
			MatchSubjectAltNames:      legacy,
			MatchTypedSubjectAltNames: typed,
		}},
	}
}

func transportSocket(name string, m proto.Message) *corev3.TransportSocket {
	return &corev3.TransportSocket{Name: name, ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: typed(m)}}
}

func upstreamTLS(sni string, common *tlsv3.CommonTlsContext) *corev3.TransportSocket {
	return transportSocket(transportSocketTLS, &tlsv3.UpstreamTlsContext{Sni: sni, CommonTlsContext: common})
}

// outlierDetection ejects failing hosts for Envoy (consecutive errors,
// which for TCP proxying include connect failures) and for gRPC, which
// honours only success-rate and failure-percentage rules
// (research/xds.md §1.5 #15). Without it Envoy would never leave
// priority 0 for a dead but listed cluster.
func outlierDetection() *clusterv3.OutlierDetection {
	return &clusterv3.OutlierDetection{
		Consecutive_5Xx:                    wrapperspb.UInt32(5),
		ConsecutiveGatewayFailure:          wrapperspb.UInt32(3),
		EnforcingConsecutiveGatewayFailure: wrapperspb.UInt32(100),
		EnforcingSuccessRate:               wrapperspb.UInt32(0),
		FailurePercentageThreshold:         wrapperspb.UInt32(50),
		EnforcingFailurePercentage:         wrapperspb.UInt32(100),
		FailurePercentageMinimumHosts:      wrapperspb.UInt32(1),
		FailurePercentageRequestVolume:     wrapperspb.UInt32(10),
		Interval:                           durationpb.New(time.Second),
		BaseEjectionTime:                   durationpb.New(5 * time.Second),
		MaxEjectionPercent:                 wrapperspb.UInt32(100),
	}
}

// noPanic turns off Envoy's panic routing (at <50 % healthy it would
// spread load over unhealthy hosts too), as Istio does.
func noPanic() *clusterv3.Cluster_CommonLbConfig {
	return &clusterv3.Cluster_CommonLbConfig{HealthyPanicThreshold: &typev3.Percent{Value: 0}}
}
