package v1alpha1

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// The gateway-mode contract between the agent and the xDS server. In
// gateway mode (docs/architecture.md) the agent points each derived Service's
// EndpointSlices at the local east-west gateway, one egress port per
// imported service port, and records the ports it chose on the
// ServiceImport; the xDS server opens one egress listener per recorded
// port. The agent alone allocates, so two imports never share a port.
const (
	// AnnotationEgressPorts on a ServiceImport lists the gateway egress
	// port of each of its ports, as FormatEgressPorts writes it.
	AnnotationEgressPorts = "isthmus.dev/gateway-egress-ports"
	// DefaultEgressPortMin and DefaultEgressPortMax bound the egress ports
	// the agent allocates unless told otherwise; they stay clear of the
	// gateway's mTLS ingress port (15443) and of Envoy's admin ports.
	DefaultEgressPortMin = 16000
	DefaultEgressPortMax = 31999
	// DefaultGatewayIngressPort is the east-west gateway's mTLS port.
	DefaultGatewayIngressPort = 15443
)

// EgressPort is one imported service port and the gateway port that
// carries it.
type EgressPort struct {
	// Protocol and Port are the service port as the ServiceImport lists it.
	Protocol corev1.Protocol
	Port     int32
	// Egress is the port the local gateway listens on for it.
	Egress int32
}

// FormatEgressPorts writes ports as "TCP/80=16000,TCP/443=16001", sorted,
// so the same allocation always gives the same annotation.
func FormatEgressPorts(ports []EgressPort) string {
	parts := make([]string, 0, len(ports))
	for _, p := range ports {
		parts = append(parts, fmt.Sprintf("%s/%d=%d", p.Protocol, p.Port, p.Egress))
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

// ParseEgressPorts reads what FormatEgressPorts wrote. An empty string is
// no ports.
func ParseEgressPorts(s string) ([]EgressPort, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out []EgressPort
	seen := map[int32]bool{}
	for _, part := range strings.Split(s, ",") {
		svc, egress, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return nil, fmt.Errorf("egress port %q: want PROTOCOL/PORT=EGRESS", part)
		}
		proto, port, ok := strings.Cut(svc, "/")
		if !ok {
			return nil, fmt.Errorf("egress port %q: want PROTOCOL/PORT=EGRESS", part)
		}
		switch corev1.Protocol(proto) {
		case corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP:
		default:
			return nil, fmt.Errorf("egress port %q: protocol %q is not TCP, UDP or SCTP", part, proto)
		}
		p, err := parsePort(port)
		if err != nil {
			return nil, fmt.Errorf("egress port %q: service port: %w", part, err)
		}
		e, err := parsePort(egress)
		if err != nil {
			return nil, fmt.Errorf("egress port %q: egress port: %w", part, err)
		}
		if seen[e] {
			return nil, fmt.Errorf("egress port %d appears twice in %q", e, s)
		}
		seen[e] = true
		out = append(out, EgressPort{Protocol: corev1.Protocol(proto), Port: p, Egress: e})
	}
	return out, nil
}

func parsePort(s string) (int32, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%q is not a port (1-65535)", s)
	}
	return int32(n), nil
}
