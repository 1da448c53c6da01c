package xds

import (
	"context"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/xds/model"
	"github.com/isthmus-dev/isthmus/xds/server"
)

// TestSDSServesAndRotatesGatewayCertificates: an Envoy gateway asking
// for its secrets over ADS gets the key pair and the roots, and a rotated
// certificate arrives on the same stream.
func TestSDSServesAndRotatesGatewayCertificates(t *testing.T) {
	p := newPKI(t)
	local, clusters := threeClusters(model.Gateway)
	e := newEnv(t, local, clusters)
	issue := func() []byte {
		l, err := p.ca["a"].IssueLeaf(brokerv1.GatewaySPIFFEID("a", brokerv1.DefaultClustersetDomain), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		e.ctrl.SetGatewayCertificates(context.Background(), l.CertChainPEM, l.KeyPEM, l.BundlePEM)
		return l.CertChainPEM
	}
	first := issue()

	cc, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &corev3.Node{Id: "gw-a", Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
		server.MetadataRole: structpb.NewStringValue("gateway"), server.MetadataCluster: structpb.NewStringValue("a"),
	}}}
	names := []string{"default", "ROOTCA"}
	if err := st.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resource.SecretType, ResourceNames: names}); err != nil {
		t.Fatal(err)
	}
	chain := func(r *discoveryv3.DiscoveryResponse) []byte {
		t.Helper()
		var got []byte
		roots := false
		for _, a := range r.Resources {
			var s tlsv3.Secret
			if err := a.UnmarshalTo(&s); err != nil {
				t.Fatal(err)
			}
			if c := s.GetTlsCertificate(); c != nil {
				got = c.GetCertificateChain().GetInlineBytes()
			}
			if s.GetValidationContext().GetTrustedCa() != nil {
				roots = true
			}
		}
		if got == nil || !roots {
			t.Fatalf("secrets response lacks the key pair or the roots: %d resources", len(r.Resources))
		}
		return got
	}
	r, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if string(chain(r)) != string(first) {
		t.Fatal("the served certificate is not the one issued")
	}
	if err := st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resource.SecretType, ResourceNames: names, VersionInfo: r.VersionInfo, ResponseNonce: r.Nonce}); err != nil {
		t.Fatal(err)
	}
	second := issue()
	r, err = st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if string(chain(r)) != string(second) {
		t.Fatal("the rotated certificate did not reach the gateway")
	}
}
