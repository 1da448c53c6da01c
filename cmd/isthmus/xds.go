package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/isthmus-dev/isthmus/cmd/internal/serve"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/xds"
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
	return role{name: "xds", about: "the xDS server: Envoy east-west gateways and proxyless gRPC clients", metricsAddr: "127.0.0.1:9471", facts: true,
		flags: func(fs *flag.FlagSet, p string) func(context.Context, *env, *slog.Logger) error {
			domain := fs.String(p+"clusterset-domain", brokerv1.DefaultClustersetDomain, "parent of every cluster's SPIFFE trust domain")
			listen := fs.String(p+"listen", ":15010", "address of the ADS gRPC server")
			caSecret := fs.String(p+"ca-secret", brokerv1.MemberNamespace+"/"+brokerv1.IntermediateCASecret, "NAMESPACE/NAME of the cluster's intermediate CA Secret (isthmusctl join writes it); empty: serve no certificates")
			certTTL := fs.Duration(p+"cert-ttl", 24*time.Hour, "lifetime of the gateway's and workloads' certificates (renewed at half)")
			var workloads multiFlag
			fs.Var(&workloads, p+"workload-certs", "NAMESPACE/SERVICEACCOUNT=DIRECTORY: keep that identity's certificate in DIRECTORY (tls.crt, tls.key, ca.crt) for a proxyless gRPC client's file_watcher provider; repeatable")
			debugAddr := fs.String(p+"debug-addr", "", "address of /debug/xds?view=gateway|grpc, a JSON dump of the served resources (empty: off; it shows the clusterset's topology)")
			return func(ctx context.Context, e *env, log *slog.Logger) error {
				f := &e.facts
				mode, err := f.check()
				if err != nil {
					return err
				}
				if *caSecret == "" && len(workloads) > 0 {
					return fmt.Errorf("--%sworkload-certs needs --%sca-secret", p, p)
				}
				certs, err := workloadCerts(workloads)
				if err != nil {
					return err
				}
				var gwNS, gwName string
				if f.gatewayService != "" {
					if gwNS, gwName, err = namespacedName("gateway-service", f.gatewayService); err != nil {
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
				lm := model.Local{ClusterID: id, Region: f.region, Zone: f.zone, ClustersetDomain: *domain, Mode: model.Mode(mode), IngressPort: int32(f.ingressPort)}
				cfg := server.Config{ClusterID: id, Log: log, Registry: e.reg}
				if f.gatewayService != "" {
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
					Local: lm, Kube: local.Kube, MCS: local.MCS, Broker: broker.Kube, BrokerRecords: broker.Dynamic,
					BrokerNamespace: ns, LeaseDuration: f.leaseDuration, ProbeEvery: 2 * time.Second, Log: log,
				}, func(ch source.Change) { ctrl.Apply(ctx, ch) })
				if ctrl, err = xds.New(xds.Config{Local: lm, Models: src, Server: srv, Registry: e.reg, Log: log}); err != nil {
					return err
				}
				if *caSecret != "" {
					caNS, caName, err := namespacedName(p+"ca-secret", *caSecret)
					if err != nil {
						return err
					}
					if err := ctrl.ServeCertificates(ctx, xds.CertificatesConfig{
						Kube: local.Kube, CASecretNamespace: caNS, CASecretName: caName, TTL: *certTTL, Workloads: certs, Registry: e.reg,
					}); err != nil {
						return err
					}
				} else {
					log.Warn("serving no certificates (no CA Secret): gateways cannot speak mTLS")
				}
				e.health.Add("xds-source", src.Ready)
				e.health.Add("xds", ctrl.Ready)
				lis, err := net.Listen("tcp", *listen)
				if err != nil {
					return fmt.Errorf("listening for xDS on %s: %w", *listen, err)
				}
				log.Info("starting the xDS server", "cluster", id, "dataplane", mode)
				return serve.Group(ctx,
					serve.Part{Run: func(ctx context.Context) error { return srv.Serve(ctx, lis) }},
					serve.Part{Run: src.Run},
					serve.Part{Run: func(ctx context.Context) error {
						return serve.HTTP(ctx, "the xDS debug endpoint", *debugAddr, debugMux(ctrl), log)
					}},
				)
			}
		}}
}

// debugMux serves /debug/xds.
func debugMux(ctrl *xds.Controller) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/debug/xds", ctrl.DebugHandler())
	return mux
}

// workloadCerts parses --workload-certs NS/SA=DIR entries.
func workloadCerts(entries []string) ([]xds.WorkloadCert, error) {
	var out []xds.WorkloadCert
	for _, e := range entries {
		who, dir, ok := strings.Cut(e, "=")
		ns, sa, ok2 := strings.Cut(who, "/")
		if !ok || !ok2 || ns == "" || sa == "" || dir == "" {
			return nil, fmt.Errorf("--workload-certs %q: want NAMESPACE/SERVICEACCOUNT=DIRECTORY", e)
		}
		out = append(out, xds.WorkloadCert{Namespace: ns, ServiceAccount: sa, Dir: dir})
	}
	return out, nil
}

// multiFlag is a repeatable string flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }
