package main

import (
	"context"
	"flag"
	"fmt"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"log/slog"
	"net/netip"
	"os"
	"time"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/tunnel"
)

// tunnelRole is the WireGuard gateway. Run alone (`isthmus tunnel`), a
// restart of the agent never stops the data path.
func tunnelRole() role {
	return role{name: "tunnel", about: "the WireGuard gateway: keys, peers and routes to the other clusters", metricsAddr: ":9093",
		flags: func(fs *flag.FlagSet, p string) func(context.Context, *env, *slog.Logger) error {
			device := fs.String(p+"device", "isthmus0", "WireGuard interface name, unique on the host")
			impl := fs.String(p+"wireguard-implementation", string(tunnel.Auto), "auto, kernel or userspace (wireguard-go embedded in this process)")
			mtu := fs.Int(p+"mtu", 1420, "MTU of the WireGuard interface")
			listenPort := fs.Int(p+"listen-port", 51820, "UDP port WireGuard listens on")
			endpoint := fs.String(p+"endpoint", "", "ip:port other clusters' gateways reach this one at (required)")
			probePort := fs.Int(p+"probe-port", 51821, "UDP port of the echo probe on the tunnel address")
			keepalive := fs.Duration(p+"keepalive", 10*time.Second, "persistent keepalive of every peer (at least 1s; it is never off)")
			resync := fs.Duration(p+"resync", 30*time.Second, "how often peers and routes are checked against the records even without changes")
			probeInterval := fs.Duration(p+"probe-interval", time.Second, "how often each peer is probed through the tunnel")
			statusInterval := fs.Duration(p+"status-interval", 10*time.Second, "least time between two writes of the record's tunnel conditions")
			routeProtocol := fs.Int(p+"route-protocol", 158, "route protocol id marking this role's routes (5-255)")
			routeTable := fs.Int(p+"route-table", tunnel.DefaultRouteTable, "routing table of the routes to remote clusters, consulted by a rule of --rule-priority (254, main: no rule, and a route already there for a range is left in place and reported)")
			rulePriority := fs.Int(p+"rule-priority", tunnel.DefaultRulePriority, "priority of the rule consulting --route-table (1-32765: before the main table's)")
			keyNS := fs.String(p+"key-namespace", brokerv1.MemberNamespace, "namespace of the key Secret in this cluster")
			keySecret := fs.String(p+"key-secret", tunnel.DefaultKeySecret, "name of the Secret holding the cluster's WireGuard private key, shared by its gateway replicas")
			leaderElect := fs.Bool(p+"leader-elect", true, "run the device only while holding the gateway Lease in --key-namespace, so one replica at a time is active")
			identity := fs.String(p+"leader-elect-identity", "", "this replica's name in the Lease (empty: the host name)")
			leaseDuration := fs.Duration(p+"leader-elect-lease-duration", 15*time.Second, "how long a dead leader's Lease blocks a standby")
			renewDeadline := fs.Duration(p+"leader-elect-renew-deadline", 10*time.Second, "how long the leader retries renewing before it gives up")
			retryPeriod := fs.Duration(p+"leader-elect-retry-period", 2*time.Second, "how often a standby tries to take the Lease")
			handover := fs.String(p+"handover-daemonset", "", "when the process ends while this DaemonSet in --key-namespace exists and is not being deleted (a restart or upgrade of its pod, not an uninstall), leave the device, routes and rules to its next pod on this node (empty: always remove them)")
			return func(ctx context.Context, e *env, log *slog.Logger) error {
				implementation, err := tunnel.ParseImplementation(*impl)
				if err != nil {
					return err
				}
				ep, err := netip.ParseAddrPort(*endpoint)
				if err != nil {
					return fmt.Errorf("--%sendpoint %q: want ip:port: %w", p, *endpoint, err)
				}
				cfg := tunnel.Config{
					Device: *device, Implementation: implementation,
					MTU: *mtu, ListenPort: *listenPort, Endpoint: ep, ProbePort: *probePort, Keepalive: *keepalive,
					Resync: *resync, ProbeInterval: *probeInterval, StatusInterval: *statusInterval,
					RouteProtocol: *routeProtocol, RouteTable: *routeTable, RulePriority: *rulePriority, KeyNamespace: *keyNS, KeySecret: *keySecret,
					Log: log, Registry: e.reg,
				}
				if *leaderElect {
					id := *identity
					if id == "" {
						if id, err = os.Hostname(); err != nil {
							return fmt.Errorf("finding a leader election identity: %w", err)
						}
					}
					cfg.Election = &tunnel.Election{Identity: id, LeaseDuration: *leaseDuration, RenewDeadline: *renewDeadline, RetryPeriod: *retryPeriod}
				}
				if err := cfg.Validate(); err != nil {
					return err
				}
				local, err := e.Local()
				if err != nil {
					return err
				}
				if cfg.ClusterID, err = e.ClusterID(ctx); err != nil {
					return err
				}
				broker, ns, err := e.Broker(ctx)
				if err != nil {
					return err
				}
				cfg.BrokerNamespace, cfg.Broker, cfg.Local = ns, broker.Dynamic, local.Kube
				if *handover != "" {
					cfg.KeepDatapath = func(ctx context.Context) bool {
						ds, err := local.Kube.AppsV1().DaemonSets(*keyNS).Get(ctx, *handover, metav1.GetOptions{})
						if err != nil {
							log.Warn("cannot tell a restart from an uninstall; removing the device", "daemonset", *handover, "err", err)
							return false
						}
						return ds.DeletionTimestamp == nil
					}
				}
				t, err := tunnel.New(cfg)
				if err != nil {
					return err
				}
				e.health.Add("tunnel", t.Ready)
				return t.Run(ctx)
			}
		}}
}
