package v1alpha1

import "fmt"

// The isthmus.dev annotations a user sets on a ServiceExport (they travel
// to every importer's ServiceImport through exportedAnnotations), and the
// data-plane enum every component reads, declared once here so the agent,
// the xDS server and the CLI cannot drift apart.
const (
	// AnnotationLocality on a ServiceExport picks how importers choose
	// endpoints for the derived Service: local (default), spread or
	// remote-first.
	AnnotationLocality = "isthmus.dev/locality"
	// AnnotationUpstreamTLS on a ServiceExport set to "mtls" asks
	// proxyless gRPC clients in direct mode to speak mTLS to the
	// service's pods.
	AnnotationUpstreamTLS = "isthmus.dev/upstream-tls"
)

// Dataplane is how traffic crosses clusters.
type Dataplane string

const (
	// DataplaneDirect: pod IPs are routed between clusters over the
	// tunnels, and each derived Service's EndpointSlices hold the
	// endpoints the locality policy chooses.
	DataplaneDirect Dataplane = "direct"
	// DataplaneGateway: other clusters are reached through their
	// east-west gateway; derived Services point at the local gateway, one
	// egress port per service port, and the gateway's xDS chooses.
	DataplaneGateway Dataplane = "gateway"
)

// ParseDataplane reads a --dataplane value.
func ParseDataplane(s string) (Dataplane, error) {
	switch d := Dataplane(s); d {
	case DataplaneDirect, DataplaneGateway:
		return d, nil
	}
	return "", fmt.Errorf("dataplane %q: want %q or %q", s, DataplaneDirect, DataplaneGateway)
}
