package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	aggregatev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/clusters/aggregate/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/xds/model"
	"github.com/isthmus-dev/isthmus/xds/server"
	"github.com/isthmus-dev/isthmus/xds/translate"
)

// xdsAnswerTimeout bounds each answer: the server answers a first
// request at once when it has the resources, so silence means it refused
// the node or is not synced.
const xdsAnswerTimeout = 5 * time.Second

// xdsClient asks an xDS server for resources as a client of ours would.
type xdsClient struct {
	ads  discoveryv3.AggregatedDiscoveryServiceClient
	node *corev3.Node
}

// get asks for names of one type and returns the resources the server
// answers with, by name. Each question is a stream of its own: on one
// stream a second request of a type replaces the first subscription, and
// whether the server answers it at once depends on what it thinks the
// stream already holds. Diagnose never acknowledges, it only looks.
func (c *xdsClient) get(ctx context.Context, typeURL string, names []string) (map[string]proto.Message, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.ads.StreamAggregatedResources(ctx)
	if err != nil {
		return nil, fmt.Errorf("opening an ADS stream: %w", err)
	}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: c.node, TypeUrl: typeURL, ResourceNames: names}); err != nil {
		return nil, fmt.Errorf("asking for %s: %w", typeURL, err)
	}
	type answer struct {
		resp *discoveryv3.DiscoveryResponse
		err  error
	}
	for {
		ch := make(chan answer, 1)
		go func() {
			r, err := stream.Recv()
			ch <- answer{r, err}
		}()
		var a answer
		select {
		case a = <-ch:
		case <-time.After(xdsAnswerTimeout):
			return nil, fmt.Errorf("no %s answer for %v within %s", shortType(typeURL), names, xdsAnswerTimeout)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if a.err != nil {
			return nil, fmt.Errorf("reading %s: %w", shortType(typeURL), a.err)
		}
		if a.resp.GetTypeUrl() != typeURL {
			continue
		}
		out := map[string]proto.Message{}
		for _, r := range a.resp.GetResources() {
			m, err := anypb.UnmarshalNew(r, proto.UnmarshalOptions{})
			if err != nil {
				return nil, fmt.Errorf("decoding a %s: %w", shortType(typeURL), err)
			}
			out[cachev3.GetResourceName(m)] = m
		}
		return out, nil
	}
}

func shortType(typeURL string) string { return typeURL[strings.LastIndex(typeURL, ".")+1:] }

// xds asks this cluster's xDS server (--xds-server, over TLS with a
// token unless --xds-plaintext: xdsDial) for what a proxyless gRPC
// client of the service gets: one listener per imported port, its
// route, the cluster(s) it leads to and their endpoints by priority. A
// check per port says whether a client would find a healthy endpoint.
func (d *diagnosis) xds(ctx context.Context) {
	key := model.Key{Namespace: d.ns, Name: d.name}
	host := key.Host()
	if d.xdsServer == "" {
		d.add("xds", true, "skipped: pass --xds-server host:port (e.g. after kubectl -n isthmus-system port-forward svc/isthmus-xds 15010) to ask this cluster's xDS server about "+host, "")
		return
	}
	cc := d.xdsDial(ctx)
	if cc == nil {
		return
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	// Asked as a client of this cluster would ask, so what diagnose
	// reports is what such a client is given.
	as := func(v server.View) *xdsClient {
		return &xdsClient{ads: discoveryv3.NewAggregatedDiscoveryServiceClient(cc), node: &corev3.Node{
			Id:            "isthmusctl-diagnose",
			UserAgentName: "isthmusctl",
			Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
				server.MetadataRole:    structpb.NewStringValue(string(v)),
				server.MetadataCluster: structpb.NewStringValue(d.id),
			}},
		}}
	}
	c := as(server.GRPCView)
	var names []string
	for _, p := range d.ports {
		if p.Protocol == "" || p.Protocol == "TCP" {
			names = append(names, translate.GRPCListener(key, p.Port))
		}
	}
	if len(names) == 0 {
		d.add("xds", true, "no TCP port: proxyless gRPC does not apply to "+host, "")
		return
	}
	listeners, err := c.get(ctx, resource.ListenerType, names)
	if err != nil {
		d.add("xds", false, err.Error(), d.xdsAdvice(err))
		return
	}
	for _, name := range names {
		check := "xds " + name
		l, ok := listeners[name].(*listenerv3.Listener)
		if !ok {
			d.add(check, false, "the xDS server has no listener for xds:///"+name, "the xDS server has not seen the import: check its /readyz and that it runs with this cluster's id ("+d.id+")")
			continue
		}
		detail, healthy, err := d.walkListener(ctx, c, l)
		if err != nil {
			d.add(check, false, err.Error(), d.xdsAdvice(err))
			continue
		}
		d.add(check, healthy, detail, noHealthyAdvice)
	}
	d.xdsGateway(ctx, as(server.GatewayView), key)
}

const noHealthyAdvice = "the xDS server offers no healthy endpoint: every exporting cluster is unhealthy (lease lapsed or tunnel down) or has no ready pod; isthmusctl status says which"

// xdsGateway checks, in gateway mode (the import has egress ports), what
// the east-west gateway is given for each egress port: the cluster behind
// the port's listener and its endpoints.
func (d *diagnosis) xdsGateway(ctx context.Context, c *xdsClient, key model.Key) {
	if d.egress == "" {
		return
	}
	ports, err := brokerv1.ParseEgressPorts(d.egress)
	if err != nil {
		d.add("xds gateway", false, "the import's "+brokerv1.AnnotationEgressPorts+" annotation is unreadable: "+err.Error(), "the agent writes it; check the agent's version and log")
		return
	}
	for _, p := range ports {
		check := fmt.Sprintf("xds gateway :%d", p.Egress)
		name := translate.OutboundCluster(key, p.Port)
		detail, healthy, err := d.walkCluster(ctx, c, name, 0)
		if err != nil {
			d.add(check, false, err.Error(), d.xdsAdvice(err))
			continue
		}
		d.add(check, healthy, fmt.Sprintf("%s/%d: %s", p.Protocol, p.Port, detail), noHealthyAdvice)
	}
}

func (d *diagnosis) xdsAdvice(err error) string {
	if strings.Contains(err.Error(), "this xDS server serves cluster") {
		return "that xDS server belongs to another cluster: point --xds-server at " + d.id + "'s own, or run it with --cluster-id " + d.id
	}
	if advice, ok := d.streamAdvice(err); ok {
		return advice
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "within"):
		return "the xDS server did not answer: it may still be syncing (its /readyz says) or be overloaded"
	}
	return "is `isthmus xds` running and reachable at " + d.xdsServer + "?"
}

// walkListener follows a gRPC listener to its endpoints and describes
// them; healthy is true when some endpoint is usable.
func (d *diagnosis) walkListener(ctx context.Context, c *xdsClient, l *listenerv3.Listener) (detail string, healthy bool, err error) {
	hcm := &hcmv3.HttpConnectionManager{}
	if err := l.GetApiListener().GetApiListener().UnmarshalTo(hcm); err != nil {
		return "", false, fmt.Errorf("listener %s: no HTTP connection manager: %w", l.GetName(), err)
	}
	routeName := hcm.GetRds().GetRouteConfigName()
	routes, err := c.get(ctx, resource.RouteType, []string{routeName})
	if err != nil {
		return "", false, err
	}
	rc, ok := routes[routeName].(*routev3.RouteConfiguration)
	if !ok {
		return "", false, fmt.Errorf("listener %s points at route %s, which the server does not have", l.GetName(), routeName)
	}
	var clusters []string
	for _, vh := range rc.GetVirtualHosts() {
		for _, r := range vh.GetRoutes() {
			if n := r.GetRoute().GetCluster(); n != "" {
				clusters = append(clusters, n)
			}
			for _, wc := range r.GetRoute().GetWeightedClusters().GetClusters() {
				clusters = append(clusters, wc.GetName())
			}
		}
	}
	slices.Sort(clusters)
	clusters = slices.Compact(clusters)
	var parts []string
	for _, name := range clusters {
		part, ok, err := d.walkCluster(ctx, c, name, 0)
		if err != nil {
			return "", false, err
		}
		healthy = healthy || ok
		parts = append(parts, part)
	}
	return strings.Join(parts, "; "), healthy, nil
}

// walkCluster describes one cluster: an aggregate by its children, an EDS
// cluster by its endpoints per priority and source cluster.
func (d *diagnosis) walkCluster(ctx context.Context, c *xdsClient, name string, depth int) (string, bool, error) {
	if depth > 3 {
		return "", false, fmt.Errorf("cluster %s: aggregate clusters nest too deep", name)
	}
	got, err := c.get(ctx, resource.ClusterType, []string{name})
	if err != nil {
		return "", false, err
	}
	cl, ok := got[name].(*clusterv3.Cluster)
	if !ok {
		return "", false, fmt.Errorf("the server has no cluster %s", name)
	}
	if ct := cl.GetClusterType(); ct != nil {
		agg := &aggregatev3.ClusterConfig{}
		if err := ct.GetTypedConfig().UnmarshalTo(agg); err != nil {
			return "", false, fmt.Errorf("cluster %s: custom type %s is not an aggregate: %w", name, ct.GetName(), err)
		}
		var parts []string
		healthy := false
		for _, child := range agg.GetClusters() {
			part, ok, err := d.walkCluster(ctx, c, child, depth+1)
			if err != nil {
				return "", false, err
			}
			healthy = healthy || ok
			parts = append(parts, part)
		}
		return name + " = [" + strings.Join(parts, " then ") + "]", healthy, nil
	}
	eds := cl.GetEdsClusterConfig().GetServiceName()
	if eds == "" {
		eds = name
	}
	got, err = c.get(ctx, resource.EndpointType, []string{eds})
	if err != nil {
		return "", false, err
	}
	cla, ok := got[eds].(*endpointv3.ClusterLoadAssignment)
	if !ok {
		return "", false, fmt.Errorf("cluster %s: no endpoints %s from the server", name, eds)
	}
	tls := "plaintext"
	if cl.GetTransportSocket() != nil || len(cl.GetTransportSocketMatches()) > 0 {
		tls = "mTLS"
	}
	summary, healthy := describeEndpoints(cla)
	return fmt.Sprintf("%s (%s): %s", name, tls, summary), healthy, nil
}

// describeEndpoints says, per priority and source cluster (the locality's
// sub-zone), how many endpoints a client may use.
func describeEndpoints(cla *endpointv3.ClusterLoadAssignment) (string, bool) {
	if len(cla.GetEndpoints()) == 0 {
		return "no endpoints", false
	}
	locs := slices.Clone(cla.GetEndpoints())
	slices.SortStableFunc(locs, func(a, b *endpointv3.LocalityLbEndpoints) int { return int(a.GetPriority()) - int(b.GetPriority()) })
	var parts []string
	healthy := false
	for _, loc := range locs {
		usable := 0
		for _, e := range loc.GetLbEndpoints() {
			if s := e.GetHealthStatus(); s == corev3.HealthStatus_HEALTHY || s == corev3.HealthStatus_UNKNOWN {
				usable++
			}
		}
		healthy = healthy || usable > 0
		where := loc.GetLocality().GetSubZone()
		if where == "" {
			where = loc.GetLocality().GetRegion() + "/" + loc.GetLocality().GetZone()
		}
		parts = append(parts, fmt.Sprintf("priority %d %s %d/%d healthy", loc.GetPriority(), where, usable, len(loc.GetLbEndpoints())))
	}
	return strings.Join(parts, ", "), healthy
}
