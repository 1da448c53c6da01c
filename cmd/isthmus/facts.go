package main

import (
	"flag"
	"fmt"
	"time"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// facts are this cluster's facts that more than one role needs (the agent
// publishes them in the cluster's record, the xDS server programs by
// them). They are flags of the process, not of a role, so that `isthmus
// all` and the chart give each once: --region, not --agent-region and
// --xds-region. A process registers them when one of its roles uses them.
type facts struct {
	region, zone   string
	dataplane      string
	gatewayService string
	ingressPort    int
	leaseDuration  time.Duration
}

func (f *facts) register(fs *flag.FlagSet) {
	fs.StringVar(&f.region, "region", "", "this cluster's region: other clusters of the same region come first in failover")
	fs.StringVar(&f.zone, "zone", "", "this cluster's topology zone")
	fs.StringVar(&f.dataplane, "dataplane", string(brokerv1.DataplaneDirect), "how traffic crosses clusters: direct (pod IPs over the tunnels, endpoints chosen by locality) or gateway (through the east-west gateways' egress ports)")
	fs.StringVar(&f.gatewayService, "gateway-service", brokerv1.MemberNamespace+"/"+brokerv1.GatewayService, "NAMESPACE/NAME of the local Service in front of the east-west gateway pods; the xDS server gives the gateway view (it carries the gateway's key) only to its pods (empty: to any client that says it is a gateway; never in production)")
	fs.IntVar(&f.ingressPort, "gateway-ingress-port", brokerv1.DefaultGatewayIngressPort, "the east-west gateway pods' mTLS port, published with their addresses for other clusters' gateways")
	fs.DurationVar(&f.leaseDuration, "lease-duration", 30*time.Second, "validity of this cluster's heartbeat Lease, and of a peer's Lease that names none")
}

// check reports the first unusable fact.
func (f *facts) check() (brokerv1.Dataplane, error) {
	d, err := brokerv1.ParseDataplane(f.dataplane)
	if err != nil {
		return "", fmt.Errorf("--dataplane: %w", err)
	}
	if f.ingressPort < 1 || f.ingressPort > 65535 {
		return "", fmt.Errorf("--gateway-ingress-port %d is not a port", f.ingressPort)
	}
	return d, nil
}
