package main

import (
	"context"
	"fmt"
	"os"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/isthmus-dev/isthmus/xds/server"
)

// runClient subscribes to every assignment over SotW ADS, ACKs each
// response and prints "resp <unix nanos> <resources> <bytes>" for it.
func runClient(addr string, services int) error {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)))
	if err != nil {
		return err
	}
	defer cc.Close()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(context.Background())
	if err != nil {
		return err
	}
	node := &corev3.Node{Id: os.Getenv("BENCH_NODE"), Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
		server.MetadataRole: structpb.NewStringValue("gateway"), server.MetadataCluster: structpb.NewStringValue("bench"),
	}}}
	ns := names(services)
	if err := st.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resource.EndpointType, ResourceNames: ns}); err != nil {
		return err
	}
	for {
		r, err := st.Recv()
		if err != nil {
			return err
		}
		fmt.Printf("resp %d %d %d\n", time.Now().UnixNano(), len(r.Resources), proto.Size(r))
		if err := st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resource.EndpointType, VersionInfo: r.VersionInfo, ResourceNames: ns, ResponseNonce: r.Nonce}); err != nil {
			return err
		}
	}
}
