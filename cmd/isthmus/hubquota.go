package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"time"

	"k8s.io/client-go/metadata"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/hubquota"
)

// hubRoles are the roles that run on the hub cluster rather than in a
// member; `isthmus all` runs none of them.
func hubRoles() []role {
	return []role{hubQuotaRole()}
}

// hubQuotaRole is the hub's record counter: --kubeconfig is the hub's
// (in-cluster when the broker chart runs it), --broker-namespace the
// namespace of the records it counts.
func hubQuotaRole() role {
	return role{name: "hub-quota", about: "on the hub: counts each member's exports and EndpointSlices into its MemberPolicy status, for the broker's record limits", metricsAddr: ":9472",
		flags: func(fs *flag.FlagSet, p string) func(context.Context, *env, *slog.Logger) error {
			debounce := fs.Duration(p+"debounce", hubquota.DefaultDebounce, "how long a member's changed count waits before it is written (a burst of creates is one write), 10ms-1m")
			resync := fs.Duration(p+"resync", hubquota.DefaultResync, "how often an unchanged count's observedTime is refreshed, so an old one shows no counter runs, 1m-1h")
			return func(ctx context.Context, e *env, log *slog.Logger) error {
				if *debounce < 10*time.Millisecond || *debounce > time.Minute {
					return fmt.Errorf("--%sdebounce %v: must be 10ms-1m", p, *debounce)
				}
				if *resync < time.Minute || *resync > time.Hour {
					return fmt.Errorf("--%sresync %v: must be 1m-1h", p, *resync)
				}
				hub, err := e.Local()
				if err != nil {
					return err
				}
				md, err := metadata.NewForConfig(hub.Config)
				if err != nil {
					return fmt.Errorf("building a metadata client for %s: %w", hub.Config.Host, err)
				}
				ns := e.flags.brokerNamespace
				if ns == "" {
					ns = brokerv1.DefaultBrokerNamespace
				}
				c, err := hubquota.New(hubquota.Config{Metadata: md, Broker: hub.BrokerAPI, Namespace: ns,
					Debounce: *debounce, Resync: *resync, Log: log, Registry: e.reg})
				if err != nil {
					return err
				}
				e.health.Add("hub-quota", c.Ready)
				return c.Run(ctx)
			}
		}}
}
