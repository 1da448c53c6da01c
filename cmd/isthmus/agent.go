package main

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"github.com/isthmus-dev/isthmus/cmd/internal/buildinfo"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/isthmus-dev/isthmus/mcs/agent"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/setup"
)

// agentRole is the MCS agent of one member cluster.
func agentRole() role {
	return role{name: "agent", about: "the MCS agent: exports to the broker, imports from it, cluster membership", metricsAddr: "127.0.0.1:9470", facts: true,
		flags: func(fs *flag.FlagSet, p string) func(context.Context, *env, *slog.Logger) error {
			podCIDRs := fs.String(p+"pod-cidrs", "", "comma-separated pod CIDRs of this cluster, published to the clusterset")
			serviceCIDRs := fs.String(p+"service-cidrs", "", "comma-separated Service CIDRs of this cluster")
			withdrawAfter := fs.Duration(p+"withdraw-after", 5*time.Minute, "how long a peer may be silent before its exports leave this cluster's imports")
			leaderElect := fs.Bool(p+"leader-elect", true, "elect one writing leader among the agent's replicas")
			leaderNamespace := fs.String(p+"leader-elect-namespace", brokerv1.MemberNamespace, "namespace of this cluster holding the election Lease")
			maxImports := fs.Int(p+"max-imports-per-cluster", agent.DefaultMaxImportsPerCluster, "the most services imported from any one other cluster: its oldest exports are taken, the rest left out and reported (at least 1; there is no unlimited)")
			egressPorts := fs.String(p+"egress-ports", fmt.Sprintf("%d-%d", brokerv1.DefaultEgressPortMin, brokerv1.DefaultEgressPortMax), "MIN-MAX: the gateway egress ports the agent allocates to imports (gateway mode)")
			return func(ctx context.Context, e *env, log *slog.Logger) error {
				f := &e.facts
				dataplane, err := f.check()
				if err != nil {
					return err
				}
				gwNamespace, gwName, err := namespacedName("gateway-service", f.gatewayService)
				if err != nil {
					return err
				}
				if *maxImports < 1 {
					return fmt.Errorf("--%smax-imports-per-cluster %d: must be at least 1 (the cap bounds what one member can make this cluster import)", p, *maxImports)
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
					ClusterID: id, BrokerNamespace: ns, Region: f.region, Zone: f.zone,
					PodCIDRs: split(*podCIDRs), ServiceCIDRs: split(*serviceCIDRs), Version: buildinfo.Read().Version,
					Local: local.Kube, LocalMCS: local.MCS, Broker: broker.Kube, BrokerClient: broker.BrokerAPI, BrokerDynamic: broker.Dynamic,
					LeaseDuration: f.leaseDuration, WithdrawAfter: *withdrawAfter, MaxImportsPerCluster: *maxImports,
					Dataplane: dataplane, GatewayNamespace: gwNamespace, GatewayName: gwName,
					EgressPortMin: egressMin, EgressPortMax: egressMax, GatewayIngressPort: int32(f.ingressPort),
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
				if cred := e.BrokerCredential(); cred != nil {
					// The agent renews its own token and the other roles'.
					go cred.Renew(ctx, broker.Kube)
				}
				policies, err := setup.NewPolicyCheck(setup.PolicyCheckConfig{Broker: broker.Kube, Namespace: ns,
					Log: log.With("part", "broker-policies"), Registry: e.reg})
				if err != nil {
					return err
				}
				e.health.Add("broker-policies", policies.Ready)
				go policies.Run(ctx)
				log.Info("starting the MCS agent", "cluster", id, "broker", broker.Config.Host, "brokerNamespace", ns, "dataplane", dataplane)
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
