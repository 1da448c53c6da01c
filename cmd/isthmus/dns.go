package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"runtime"
	"strings"

	"github.com/isthmus-dev/isthmus/cmd/internal/serve"
	"github.com/isthmus-dev/isthmus/dnsserver"
)

// defaultDNSListen is all interfaces, because the cluster's CoreDNS
// reaches the resolver through a Service (forward clusterset.local to it),
// on an unprivileged port, so the container needs neither root nor
// NET_BIND_SERVICE (the Service maps port 53 to it). Not 5353: that is
// mDNS, which would collide with a host's avahi under hostNetwork.
const defaultDNSListen = ":1053"

// runDNS is `isthmus dns` with its arguments.
func runDNS(ctx context.Context, args []string, log *slog.Logger) error {
	return runRoles(ctx, "dns", []role{dnsRole()}, args, log, io.Discard)
}

// dnsRole is the authoritative clusterset.local resolver over the local
// cluster's ServiceImports and EndpointSlices.
func dnsRole() role {
	return role{name: "dns", about: "the clusterset.local resolver", metricsAddr: ":9153",
		flags: func(fs *flag.FlagSet, p string) func(context.Context, *env, *slog.Logger) error {
			listen := fs.String(p+"listen", defaultDNSListen, "address to serve DNS on, UDP and TCP")
			domain := fs.String(p+"domain", dnsserver.DefaultZone, "the clusterset DNS domain, the zone this server is authoritative for")
			// --zone was this flag's name, but the agent and the xDS
			// server take --zone as the topology zone: it stays accepted
			// for a while, with a warning.
			oldDomain := fs.String(p+"zone", "", "deprecated: the old name of --"+p+"domain")
			clusterZone := fs.String(p+"cluster-zone", "", "serve the opt-in per-cluster form <svc>.<ns>.svc.<clusterid>.<cluster-zone> (off when empty)")
			ttl := fs.Uint(p+"ttl", dnsserver.DefaultTTL, "TTL of answers and of negative answers (SOA minimum), seconds, 1-3600")
			maxUDP := fs.Int(p+"max-udp-size", dnsserver.DefaultMaxUDPSize, "largest UDP response, whatever a client advertises, 512-65535")
			nsAddrs := fs.String(p+"ns-addr", "", "comma-separated addresses ns.dns.<zone> (the apex NS target) resolves to, e.g. this Service's ClusterIP")
			sockets := fs.Int(p+"udp-sockets", runtime.GOMAXPROCS(0), "UDP sockets sharing the port (SO_REUSEPORT), one reader each")
			return func(ctx context.Context, e *env, log *slog.Logger) error {
				if *oldDomain != "" {
					log.Warn("--" + p + "zone (" + envName(p+"zone") + ") is deprecated; use --" + p + "domain (" + envName(p+"domain") + ")")
					if *domain != dnsserver.DefaultZone && *domain != *oldDomain {
						return fmt.Errorf("--%sdomain %q and the deprecated --%szone %q disagree", p, *domain, p, *oldDomain)
					}
					*domain = *oldDomain
				}
				if *ttl == 0 || *ttl > 3600 {
					return fmt.Errorf("--%sttl %d: must be 1-3600", p, *ttl)
				}
				var addrs []netip.Addr
				for _, s := range strings.Split(*nsAddrs, ",") {
					if s = strings.TrimSpace(s); s == "" {
						continue
					}
					a, err := netip.ParseAddr(s)
					if err != nil {
						return fmt.Errorf("--%sns-addr %q: %w", p, s, err)
					}
					addrs = append(addrs, a)
				}
				builder, err := dnsserver.NewBuilder(dnsserver.Config{Zone: *domain, ClusterZone: *clusterZone, TTL: uint32(*ttl), MaxUDPSize: *maxUDP}, addrs)
				if err != nil {
					return fmt.Errorf("configuring the resolver: %w", err)
				}
				local, err := e.Local()
				if err != nil {
					return err
				}
				metrics := dnsserver.NewMetrics(e.reg, nil)
				handler, err := dnsserver.NewHandler(builder.Config(), metrics)
				if err != nil {
					return fmt.Errorf("configuring the resolver: %w", err)
				}
				src, err := dnsserver.NewSource(dnsserver.SourceConfig{
					Kube: local.Kube, MCS: local.MCS, Builder: builder, Handler: handler, Metrics: metrics, Registry: e.reg, Log: log,
				})
				if err != nil {
					return err
				}
				e.health.Add("dns", src.Ready)

				l, err := dnsserver.Listen(ctx, *listen, *sockets)
				if err != nil {
					return err
				}
				log.Info("serving DNS", "addr", l.Addr().String(), "domain", builder.Config().Zone, "cluster_zone", builder.Config().ClusterZone, "ttl", builder.Config().TTL)
				return serve.Group(ctx,
					serve.Part{Run: func(ctx context.Context) error { return l.Serve(ctx, handler, log) }},
					serve.Part{Run: src.Run},
				)
			}
		}}
}
