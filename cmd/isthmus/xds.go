package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/isthmus-dev/isthmus/cmd/internal/kube"
	"github.com/isthmus-dev/isthmus/cmd/internal/serve"
	"github.com/isthmus-dev/isthmus/mcs/agent"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/setup"
	"github.com/isthmus-dev/isthmus/xds"
	xdsidentity "github.com/isthmus-dev/isthmus/xds/identity"
	"github.com/isthmus-dev/isthmus/xds/model"
	"github.com/isthmus-dev/isthmus/xds/server"
	"github.com/isthmus-dev/isthmus/xds/source"
)

// xdsRole runs `isthmus xds`: ADS for the cluster's Envoy east-west
// gateways and proxyless gRPC clients.
// serveCertificates issues and rotates the gateway's certificate (served
// over SDS) and the workloads' (written as files), from the cluster's
// intermediate CA.
func serveCertificates(ctx context.Context, kube kubernetes.Interface, secret, cluster, domain string, ttl time.Duration, workloads []string, ctrl *xds.Controller, reg prometheus.Registerer, log *slog.Logger) error {
	dirs, err := workloadCerts(workloads, cluster, domain)
	if err != nil {
		return err
	}
	cas, err := newCASource(ctx, kube, secret, log)
	if err != nil {
		return err
	}
	go cas.watch(ctx, time.Minute)
	metrics := xdsidentity.NewMetrics(reg)
	gw := brokerv1.GatewaySPIFFEID(cluster, domain)
	if _, err := cas.rotate(ctx, gw, ttl, reg, metrics, func(l *xdsidentity.Leaf) {
		ctrl.SetGatewayCertificates(ctx, l.CertChainPEM, l.KeyPEM, l.BundlePEM)
		log.Info("gateway certificate in place", "leaf", l)
	}); err != nil {
		return err
	}
	for id, dir := range dirs {
		if _, err := cas.rotate(ctx, id, ttl, reg, metrics, func(l *xdsidentity.Leaf) {
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

func xdsRole(ctx context.Context, args []string, log *slog.Logger) error {
	fs := flag.NewFlagSet("isthmus xds", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig of this cluster (default: in-cluster or $KUBECONFIG)")
	kubeContext := fs.String("context", "", "kubeconfig context of this cluster")
	brokerKubeconfig := fs.String("broker-kubeconfig", "", "kubeconfig for the broker (default: the isthmus-system/isthmus-broker Secret that isthmusctl join wrote)")
	brokerNamespace := fs.String("broker-namespace", "", "broker namespace (default: the broker kubeconfig's, else isthmus-broker)")
	clusterID := fs.String("cluster-id", "", "this cluster's id (default: its cluster.clusterset.k8s.io ClusterProperty)")
	region := fs.String("region", "", "this cluster's region: other clusters of the same region come first in failover")
	zone := fs.String("zone", "", "this cluster's zone")
	mode := fs.String("dataplane", string(model.Direct), "how traffic crosses clusters: direct (pod IPs over the tunnels) or gateway (through east-west gateways)")
	domain := fs.String("clusterset-domain", brokerv1.DefaultClustersetDomain, "parent of every cluster's SPIFFE trust domain")
	ingressPort := fs.Int("gateway-ingress-port", brokerv1.DefaultGatewayIngressPort, "the east-west gateway's mTLS port")
	listen := fs.String("listen", ":15010", "address of the ADS gRPC server")
	leaseDuration := fs.Duration("lease-duration", 30*time.Second, "heartbeat Lease validity when a Lease names none")
	metricsAddr := fs.String("metrics-addr", "127.0.0.1:9471", "address for /metrics, /healthz and /readyz (empty: none)")
	caSecret := fs.String("ca-secret", brokerv1.MemberNamespace+"/"+brokerv1.IntermediateCASecret, "NAMESPACE/NAME of the cluster's intermediate CA Secret (isthmusctl join writes it); empty: serve no certificates")
	certTTL := fs.Duration("cert-ttl", 24*time.Hour, "lifetime of the gateway's and workloads' certificates (renewed at half)")
	var workloads multiFlag
	fs.Var(&workloads, "workload-certs", "NAMESPACE/SERVICEACCOUNT=DIRECTORY: keep that identity's certificate in DIRECTORY (tls.crt, tls.key, ca.crt) for a proxyless gRPC client's file_watcher provider; repeatable")
	debugAddr := fs.String("debug-addr", "", "address of /debug/xds?view=gateway|grpc, a JSON dump of the served resources (empty: off; it shows the clusterset's topology)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *mode != string(model.Direct) && *mode != string(model.Gateway) {
		return fmt.Errorf("--dataplane %q: want direct or gateway", *mode)
	}
	if *ingressPort <= 0 || *ingressPort > 65535 {
		return fmt.Errorf("--gateway-ingress-port %d is not a port", *ingressPort)
	}

	localCfg, err := kube.Config(*kubeconfig, *kubeContext)
	if err != nil {
		return err
	}
	localKube, err := kubernetes.NewForConfig(localCfg)
	if err != nil {
		return fmt.Errorf("making the local client: %w", err)
	}
	localDyn, err := dynamic.NewForConfig(localCfg)
	if err != nil {
		return fmt.Errorf("making the local dynamic client: %w", err)
	}
	localMCS, err := mcsclient.NewForConfig(localCfg)
	if err != nil {
		return fmt.Errorf("making the local MCS client: %w", err)
	}
	id, err := agent.ClusterID(ctx, localDyn, *clusterID)
	if err != nil {
		return err
	}
	brokerCfg, ns, err := setup.BrokerConfig(ctx, localKube, *brokerKubeconfig)
	if err != nil {
		return err
	}
	if *brokerNamespace != "" {
		ns = *brokerNamespace
	}
	broker, err := kubernetes.NewForConfig(brokerCfg)
	if err != nil {
		return fmt.Errorf("making the broker client: %w", err)
	}
	brokerDyn, err := dynamic.NewForConfig(brokerCfg)
	if err != nil {
		return fmt.Errorf("making the broker dynamic client: %w", err)
	}

	local := model.Local{ClusterID: id, Region: *region, Zone: *zone, ClustersetDomain: *domain, Mode: model.Mode(*mode), IngressPort: int32(*ingressPort)}
	reg, health := serve.NewRegistry(), serve.NewHealth()
	srv, err := server.New(ctx, server.Config{ClusterID: id, Log: log, Registry: reg})
	if err != nil {
		return err
	}
	var ctrl *xds.Controller
	src := source.New(source.Config{
		Local: local, Kube: localKube, MCS: localMCS, Broker: broker, BrokerDynamic: brokerDyn,
		BrokerNamespace: ns, LeaseDuration: *leaseDuration, ProbeEvery: 2 * time.Second, Log: log,
	}, func(ch source.Change) { ctrl.Apply(ctx, ch) })
	ctrl, err = xds.NewController(local, src, srv, reg, log)
	if err != nil {
		return err
	}
	if *caSecret != "" {
		if err := serveCertificates(ctx, localKube, *caSecret, id, *domain, *certTTL, workloads, ctrl, reg, log); err != nil {
			return err
		}
	} else if len(workloads) > 0 {
		return fmt.Errorf("--workload-certs needs --ca-secret")
	} else {
		log.Warn("serving no certificates (--ca-secret is empty): gateways cannot speak mTLS")
	}
	health.Add("source", src.Ready)
	health.Add("xds", ctrl.Ready)

	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listening for xDS on %s: %w", *listen, err)
	}
	g := grpc.NewServer(
		// Clients hold one long stream; keepalives find dead ones.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	srv.Register(g)
	log.Info("serving xDS", "addr", lis.Addr().String(), "cluster", id, "dataplane", *mode)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, 4)
	n := 0
	run := func(f func() error) {
		n++
		go func() {
			err := f()
			cancel()
			errs <- err
		}()
	}
	run(func() error { return g.Serve(lis) })
	go func() { <-ctx.Done(); g.Stop() }()
	run(func() error { return src.Run(ctx) })
	run(func() error { return serve.Run(ctx, *metricsAddr, reg, health, log) })
	if *debugAddr != "" {
		mux := http.NewServeMux()
		mux.Handle("/debug/xds", ctrl.DebugHandler())
		hs := &http.Server{Addr: *debugAddr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
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
