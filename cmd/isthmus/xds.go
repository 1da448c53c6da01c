package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/isthmus-dev/isthmus/cmd/internal/serve"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/xds"
	"github.com/isthmus-dev/isthmus/xds/auth"
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
			tlsMode := fs.String(p+"tls", "auto", "ADS over TLS with a certificate from the cluster's intermediate CA: auto (TLS unless --"+p+"listen is a loopback address) or always")
			serverID := fs.String(p+"server-identity", brokerv1.MemberNamespace+"/isthmus-xds", "NAMESPACE/SERVICEACCOUNT of the SPIFFE id in the serving certificate")
			serverNames := fs.String(p+"server-names", "isthmus-xds."+brokerv1.MemberNamespace+".svc,isthmus-xds."+brokerv1.MemberNamespace+".svc.cluster.local", "comma-separated DNS names in the serving certificate: the names clients dial (gRPC and Envoy check them)")
			gatewaySA := fs.String(p+"gateway-service-account", brokerv1.MemberNamespace+"/isthmus-gateway", "NAMESPACE/NAME of the only ServiceAccount whose token (audience "+auth.Audience+", checked with TokenReview) admits a client to the gateway view; empty: check no tokens")
			grpcAuth := fs.String(p+"grpc-auth", "token", "who gets the gRPC view over TLS: token (a client sends a token of any ServiceAccount with audience "+auth.Audience+") or anonymous (anyone reaching the listener; topology only, never keys)")
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
				plaintext, err := plaintextADS(*tlsMode, *listen)
				if err != nil {
					return fmt.Errorf("--%stls: %w", p, err)
				}
				if !plaintext && *caSecret == "" {
					return fmt.Errorf("ADS on %s is served over TLS, which needs --%sca-secret; only a loopback --%slisten is served in plaintext", *listen, p, p)
				}
				if *grpcAuth != "token" && *grpcAuth != "anonymous" {
					return fmt.Errorf("--%sgrpc-auth %q: want token or anonymous", p, *grpcAuth)
				}
				srvNS, srvSA, err := namespacedName(p+"server-identity", *serverID)
				if err != nil {
					return err
				}
				if *gatewaySA != "" {
					if _, _, err := namespacedName(p+"gateway-service-account", *gatewaySA); err != nil {
						return err
					}
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
				// gRPC sends call credentials only over TLS, so a plaintext
				// (loopback) server cannot ask gRPC clients for a token.
				cfg := server.Config{ClusterID: id, Log: log, Registry: e.reg, AnonymousGRPC: plaintext || *grpcAuth == "anonymous"}
				if *gatewaySA != "" {
					cfg.Authenticator, cfg.GatewayServiceAccount = auth.NewReviewer(local.Kube, auth.Audience), *gatewaySA
				} else {
					log.Warn("--gateway-service-account is empty: xDS clients are not authenticated")
				}
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
						Serving: &xds.ServingCert{Namespace: srvNS, ServiceAccount: srvSA, DNSNames: split(*serverNames)},
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
				var tlsConfig *tls.Config
				if !plaintext {
					tlsConfig = ctrl.ServingTLS()
				}
				log.Info("starting the xDS server", "cluster", id, "dataplane", mode, "tls", !plaintext)
				return serve.Group(ctx,
					serve.Part{Run: func(ctx context.Context) error { return srv.ServeTLS(ctx, lis, tlsConfig) }},
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

// plaintextADS says whether ADS is served in plaintext: with --tls auto,
// only on a loopback address, which only processes of the same network
// namespace reach (the demo's and a node's own clients).
func plaintextADS(mode, listen string) (bool, error) {
	switch mode {
	case "always":
		return false, nil
	case "auto":
	default:
		return false, fmt.Errorf("%q: want auto or always", mode)
	}
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false, fmt.Errorf("listen address %q: %w", listen, err)
	}
	if host == "localhost" {
		return true, nil
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback(), nil
}
