package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/isthmus-dev/isthmus/cmd/internal/kube"
	"github.com/isthmus-dev/isthmus/cmd/internal/serve"
	"github.com/isthmus-dev/isthmus/dnsserver"
)

// defaultDNSListen is all interfaces, because the cluster's CoreDNS
// reaches the resolver through a Service (forward clusterset.local to it),
// on an unprivileged port, so the container needs neither root nor
// NET_BIND_SERVICE (the Service maps port 53 to it). Not 5353: that is
// mDNS, which would collide with a host's avahi under hostNetwork.
const defaultDNSListen = ":1053"

// dnsRole runs `isthmus dns`: the authoritative clusterset.local resolver
// over the local cluster's ServiceImports and EndpointSlices.
func dnsRole(ctx context.Context, args []string, log *slog.Logger) error {
	fs := flag.NewFlagSet("dns", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig of the local cluster (default: in-cluster, then $KUBECONFIG, then ~/.kube/config)")
	kubeContext := fs.String("context", "", "kubeconfig context (default: the current context)")
	listen := fs.String("listen", defaultDNSListen, "address to serve DNS on, UDP and TCP")
	zone := fs.String("zone", dnsserver.DefaultZone, "the clusterset zone")
	clusterZone := fs.String("cluster-zone", "", "serve the opt-in per-cluster form <svc>.<ns>.svc.<clusterid>.<cluster-zone> (off when empty)")
	ttl := fs.Uint("ttl", dnsserver.DefaultTTL, "TTL of answers and of negative answers (SOA minimum), seconds, 1-3600")
	maxUDP := fs.Int("max-udp-size", dnsserver.DefaultMaxUDPSize, "largest UDP response, whatever a client advertises, 512-65535")
	nsAddrs := fs.String("ns-addr", "", "comma-separated addresses ns.dns.<zone> (the apex NS target) resolves to, e.g. this Service's ClusterIP")
	sockets := fs.Int("udp-sockets", runtime.GOMAXPROCS(0), "UDP sockets sharing the port (SO_REUSEPORT), one reader each")
	metricsAddr := fs.String("metrics-addr", ":9153", "address of /metrics, /healthz and /readyz (empty: off)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *ttl == 0 || *ttl > 3600 {
		return fmt.Errorf("--ttl %d: must be 1-3600", *ttl)
	}
	var addrs []netip.Addr
	for _, s := range strings.Split(*nsAddrs, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return fmt.Errorf("--ns-addr %q: %w", s, err)
		}
		addrs = append(addrs, a)
	}

	builder, err := dnsserver.NewBuilder(dnsserver.Config{Zone: *zone, ClusterZone: *clusterZone, TTL: uint32(*ttl), MaxUDPSize: *maxUDP}, addrs)
	if err != nil {
		return fmt.Errorf("configuring the resolver: %w", err)
	}
	cfg, err := kube.Config(*kubeconfig, *kubeContext)
	if err != nil {
		return fmt.Errorf("loading kubeconfig: %w", err)
	}
	kc, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("building Kubernetes client: %w", err)
	}
	mc, err := mcsclient.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("building MCS client: %w", err)
	}
	reg, health := serve.NewRegistry(), serve.NewHealth()
	var src *dnsserver.Source
	metrics := dnsserver.NewMetrics(reg, func() time.Duration { return src.SyncAge() })
	handler, err := dnsserver.NewHandler(builder.Config(), metrics)
	if err != nil {
		return fmt.Errorf("configuring the resolver: %w", err)
	}
	src = dnsserver.NewSource(kc, mc, builder, handler, log)
	src.OnIndex = metrics.SetIndex
	health.Add("dns", src.Ready)

	l, err := dnsserver.Listen(ctx, *listen, *sockets)
	if err != nil {
		return err
	}
	log.Info("serving DNS", "addr", l.Addr().String(), "zone", builder.Config().Zone, "cluster_zone", builder.Config().ClusterZone, "ttl", builder.Config().TTL)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, 3)
	run := func(f func() error) {
		go func() {
			err := f()
			cancel() // one part ending ends the role
			errs <- err
		}()
	}
	run(func() error { return l.Serve(ctx, handler, log) })
	run(func() error { return src.Run(ctx) })
	run(func() error { return serve.Run(ctx, *metricsAddr, reg, health, log) })
	var all []error
	for range 3 {
		if err := <-errs; err != nil && !errors.Is(err, context.Canceled) {
			all = append(all, err)
		}
	}
	return errors.Join(all...)
}
