package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"k8s.io/client-go/kubernetes"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/xds"
	xdsidentity "github.com/isthmus-dev/isthmus/xds/identity"
	"github.com/isthmus-dev/isthmus/xds/model"
	"github.com/isthmus-dev/isthmus/xds/server"
	"github.com/isthmus-dev/isthmus/xds/source"
)

// runXDS is `isthmus xds` with its arguments.
func runXDS(ctx context.Context, args []string, log *slog.Logger) error {
	return runRoles(ctx, "xds", []role{xdsRole()}, args, log, io.Discard)
}

// xdsRole is ADS for the cluster's Envoy east-west gateways and proxyless
// gRPC clients.
func xdsRole() role {
	return role{name: "xds", about: "the xDS server: Envoy east-west gateways and proxyless gRPC clients", metricsAddr: "127.0.0.1:9471",
		flags: func(fs *flag.FlagSet, p string) func(context.Context, *env, *slog.Logger) error {
			region := fs.String(p+"region", "", "this cluster's region: other clusters of the same region come first in failover")
			zone := fs.String(p+"zone", "", "this cluster's zone")
			mode := fs.String(p+"dataplane", string(model.Direct), "how traffic crosses clusters: direct (pod IPs over the tunnels) or gateway (through east-west gateways)")
			domain := fs.String(p+"clusterset-domain", brokerv1.DefaultClustersetDomain, "parent of every cluster's SPIFFE trust domain")
			ingressPort := fs.Int(p+"gateway-ingress-port", brokerv1.DefaultGatewayIngressPort, "the east-west gateway's mTLS port")
			listen := fs.String(p+"listen", ":15010", "address of the ADS gRPC server")
			leaseDuration := fs.Duration(p+"lease-duration", 30*time.Second, "heartbeat Lease validity when a Lease names none")
			caSecret := fs.String(p+"ca-secret", brokerv1.MemberNamespace+"/"+brokerv1.IntermediateCASecret, "NAMESPACE/NAME of the cluster's intermediate CA Secret (isthmusctl join writes it); empty: serve no certificates")
			certTTL := fs.Duration(p+"cert-ttl", 24*time.Hour, "lifetime of the gateway's and workloads' certificates (renewed at half)")
			var workloads multiFlag
			fs.Var(&workloads, p+"workload-certs", "NAMESPACE/SERVICEACCOUNT=DIRECTORY: keep that identity's certificate in DIRECTORY (tls.crt, tls.key, ca.crt) for a proxyless gRPC client's file_watcher provider; repeatable")
			gatewayService := fs.String(p+"gateway-service", brokerv1.MemberNamespace+"/isthmus-gateway", "NAMESPACE/NAME of the east-west gateway's Service: only clients at its pods' addresses get the gateway view, which carries the gateway's private key (empty: any client that says it is a gateway; never in production)")
			debugAddr := fs.String(p+"debug-addr", "", "address of /debug/xds?view=gateway|grpc, a JSON dump of the served resources (empty: off; it shows the clusterset's topology)")
			return func(ctx context.Context, e *env, log *slog.Logger) error {
				if *mode != string(model.Direct) && *mode != string(model.Gateway) {
					return fmt.Errorf("--%sdataplane %q: want direct or gateway", p, *mode)
				}
				if *ingressPort <= 0 || *ingressPort > 65535 {
					return fmt.Errorf("--%sgateway-ingress-port %d is not a port", p, *ingressPort)
				}
				if *caSecret == "" && len(workloads) > 0 {
					return fmt.Errorf("--%sworkload-certs needs --%sca-secret", p, p)
				}
				certs, err := workloadCerts(workloads)
				if err != nil {
					return err
				}
				var gwNS, gwName string
				if *gatewayService != "" {
					if gwNS, gwName, err = namespacedName(p+"gateway-service", *gatewayService); err != nil {
						return err
					}
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
				lm := model.Local{ClusterID: id, Region: *region, Zone: *zone, ClustersetDomain: *domain, Mode: model.Mode(*mode), IngressPort: int32(*ingressPort)}
				cfg := server.Config{ClusterID: id, Log: log, Registry: e.reg}
				if *gatewayService != "" {
					gateways := source.NewGatewayPods(local.Kube, gwNS, gwName)
					cfg.GatewayPeer = gateways.Has
					e.health.Add("xds-gateway-pods", gateways.Ready)
					go func() {
						if err := gateways.Run(ctx); err != nil && ctx.Err() == nil {
							log.Error("watching the gateway Service's pods", "err", err)
						}
					}()
				} else {
					log.Warn("--gateway-service is empty: any client that says it is a gateway gets the gateway view and the gateway's key")
				}
				srv, err := server.New(ctx, cfg)
				if err != nil {
					return err
				}
				var ctrl *xds.Controller
				src := source.New(source.Config{
					Local: lm, Kube: local.Kube, MCS: local.MCS, Broker: broker.Kube, BrokerDynamic: broker.Dynamic,
					BrokerNamespace: ns, LeaseDuration: *leaseDuration, ProbeEvery: 2 * time.Second, Log: log,
				}, func(ch source.Change) { ctrl.Apply(ctx, ch) })
				if ctrl, err = xds.NewController(lm, src, srv, e.reg, log); err != nil {
					return err
				}
				if *caSecret != "" {
					if err := serveCertificates(ctx, local.Kube, *caSecret, id, *domain, *certTTL, certs, ctrl, e.reg, log); err != nil {
						return err
					}
				} else {
					log.Warn("serving no certificates (no CA Secret): gateways cannot speak mTLS")
				}
				e.health.Add("xds-source", src.Ready)
				e.health.Add("xds", ctrl.Ready)
				return serveXDS(ctx, *listen, *debugAddr, srv, src, ctrl, log, id, *mode)
			}
		}}
}

// serveXDS serves ADS (and the debug dump when asked) and runs the
// source until ctx ends or one of them fails.
func serveXDS(ctx context.Context, listen, debugAddr string, srv *server.Server, src *source.Source, ctrl *xds.Controller, log *slog.Logger, id, mode string) error {
	lis, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("listening for xDS on %s: %w", listen, err)
	}
	g := grpc.NewServer(
		// Clients hold one long stream; keepalives find dead ones.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	srv.Register(g)
	log.Info("serving xDS", "addr", lis.Addr().String(), "cluster", id, "dataplane", mode)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, 3)
	n := 0
	run := func(f func() error) {
		n++
		go func() {
			err := f()
			cancel() // one part ending ends the role
			errs <- err
		}()
	}
	run(func() error { return g.Serve(lis) })
	go func() { <-ctx.Done(); g.Stop() }()
	run(func() error { return src.Run(ctx) })
	if debugAddr != "" {
		mux := http.NewServeMux()
		mux.Handle("/debug/xds", ctrl.DebugHandler())
		hs := &http.Server{Addr: debugAddr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { <-ctx.Done(); _ = hs.Close() }()
		run(func() error {
			if err := hs.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("serving the xDS debug endpoint: %w", err)
			}
			return nil
		})
	}
	var all []error
	for range n {
		if err := <-errs; err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, grpc.ErrServerStopped) {
			all = append(all, err)
		}
	}
	return errors.Join(all...)
}

// serveCertificates issues and rotates the gateway's certificate (served
// over SDS) and the workloads' (written as files), from the cluster's
// intermediate CA.
func serveCertificates(ctx context.Context, kube kubernetes.Interface, secret, cluster, domain string, ttl time.Duration, workloads []workloadCert, ctrl *xds.Controller, reg prometheus.Registerer, log *slog.Logger) error {
	cas, err := newCASource(ctx, kube, secret, log)
	if err != nil {
		return err
	}
	go cas.watch(ctx, time.Minute)
	metrics := xdsidentity.NewMetrics(reg)
	gw := brokerv1.GatewaySPIFFEID(cluster, domain)
	if err := cas.rotate(ctx, gw, ttl, metrics, func(l *xdsidentity.Leaf) {
		ctrl.SetGatewayCertificates(ctx, l.CertChainPEM, l.KeyPEM, l.BundlePEM)
		log.Info("gateway certificate in place", "leaf", l)
	}); err != nil {
		return err
	}
	for _, w := range workloads {
		id, dir := brokerv1.WorkloadSPIFFEID(cluster, domain, w.namespace, w.serviceAccount), w.dir
		if err := cas.rotate(ctx, id, ttl, metrics, func(l *xdsidentity.Leaf) {
			if err := l.WriteFiles(dir); err != nil {
				log.Error("writing a workload certificate", "id", id, "dir", dir, "err", err)
				return
			}
			log.Info("workload certificate written", "leaf", l, "dir", dir)
		}); err != nil {
			return err
		}
	}
	return nil
}
