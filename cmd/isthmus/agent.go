package main

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/isthmus-dev/isthmus/mcs/agent"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = "dev"

// runAgent is `isthmus agent` with its arguments.
func runAgent(ctx context.Context, args []string, log *slog.Logger) error {
	return runRoles(ctx, "agent", []role{agentRole()}, args, log, io.Discard)
}

// agentRole is the MCS agent of one member cluster.
func agentRole() role {
	return role{name: "agent", about: "the MCS agent: exports to the broker, imports from it, cluster membership", metricsAddr: "127.0.0.1:9470",
		flags: func(fs *flag.FlagSet, p string) func(context.Context, *env, *slog.Logger) error {
			region := fs.String(p+"region", "", "this cluster's region, for locality-aware failover")
			zone := fs.String(p+"zone", "", "this cluster's zone")
			podCIDRs := fs.String(p+"pod-cidrs", "", "comma-separated pod CIDRs of this cluster, published to the clusterset")
			serviceCIDRs := fs.String(p+"service-cidrs", "", "comma-separated Service CIDRs of this cluster")
			leaseDuration := fs.Duration(p+"lease-duration", 30*time.Second, "validity of this cluster's heartbeat; a peer silent this long is unhealthy")
			withdrawAfter := fs.Duration(p+"withdraw-after", 5*time.Minute, "how long a peer may be silent before its exports leave this cluster's imports")
			leaderElect := fs.Bool(p+"leader-elect", true, "elect one writing leader among the agent's replicas")
			leaderNamespace := fs.String(p+"leader-elect-namespace", brokerv1.MemberNamespace, "namespace of this cluster holding the election Lease")
			dataplane := fs.String(p+"dataplane", agent.DataplaneDirect, "where derived Services send ClusterSetIP traffic: direct (to the endpoints, chosen by locality) or gateway (to the local east-west gateway's egress ports)")
			gatewayService := fs.String(p+"gateway-service", brokerv1.MemberNamespace+"/"+brokerv1.GatewayService, "NAMESPACE/NAME of the local Service in front of the east-west gateway pods (gateway mode)")
			ingressPort := fs.Int(p+"gateway-ingress-port", brokerv1.DefaultGatewayIngressPort, "the east-west gateway pods' mTLS port, published with their addresses for other clusters' gateways (gateway mode)")
			egressPorts := fs.String(p+"egress-ports", fmt.Sprintf("%d-%d", brokerv1.DefaultEgressPortMin, brokerv1.DefaultEgressPortMax), "MIN-MAX: the gateway egress ports the agent allocates to imports (gateway mode)")
			return func(ctx context.Context, e *env, log *slog.Logger) error {
				gwNamespace, gwName, err := namespacedName(p+"gateway-service", *gatewayService)
				if err != nil {
					return err
				}
				if *ingressPort < 1 || *ingressPort > 65535 {
					return fmt.Errorf("--%sgateway-ingress-port %d is not a port", p, *ingressPort)
				}
				egressMin, egressMax, err := agent.ParseEgressPortRange(*egressPorts)
				if err != nil {
					return fmt.Errorf("--%segress-ports: %w", p, err)
				}
				local, err := e.Local()
				if err != nil {
					return err
				}
				id, err := e.ClusterID(ctx)
				if err != nil {
					return err
				}
				broker, ns, err := e.Broker(ctx)
				if err != nil {
					return err
				}
				cfg := agent.Config{
					ClusterID: id, BrokerNamespace: ns, Region: *region, Zone: *zone,
					PodCIDRs: split(*podCIDRs), ServiceCIDRs: split(*serviceCIDRs), Version: version,
					Local: local.Kube, LocalMCS: local.MCS, Broker: broker.Kube, BrokerDynamic: broker.Dynamic,
					LeaseDuration: *leaseDuration, WithdrawAfter: *withdrawAfter,
					Dataplane: *dataplane, GatewayNamespace: gwNamespace, GatewayName: gwName,
					EgressPortMin: egressMin, EgressPortMax: egressMax, GatewayIngressPort: int32(*ingressPort),
					Log: log, Registry: e.reg,
				}
				if *leaderElect {
					cfg.LeaderElectionNamespace, cfg.Identity = *leaderNamespace, identity()
				}
				a, err := agent.New(cfg)
				if err != nil {
					return err
				}
				e.health.Add("agent", a.Ready)
				log.Info("starting the MCS agent", "cluster", id, "broker", broker.Config.Host, "brokerNamespace", ns, "dataplane", *dataplane)
				return a.Run(ctx)
			}
		}}
}

// identity names this replica in the leader election: the host (the pod's
// name in a cluster) and a random suffix, so restarts never collide.
func identity() string {
	host, _ := os.Hostname()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%s-%x", host, b)
}

func split(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
