package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/isthmus-dev/isthmus/cmd/internal/kube"
	"github.com/isthmus-dev/isthmus/cmd/internal/serve"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/v1alpha1"
	"github.com/isthmus-dev/isthmus/tunnel"
)

// tunnelRole runs the WireGuard gateway: `isthmus tunnel`. It runs in its
// own process so that restarting the agent or the xDS server never stops
// the data path.
func tunnelRole(ctx context.Context, args []string, log *slog.Logger) error {
	fs := flag.NewFlagSet("tunnel", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig of this cluster, which holds the key Secret (empty: in-cluster or $KUBECONFIG)")
	kubeContext := fs.String("context", "", "context in --kubeconfig")
	brokerKubeconfig := fs.String("broker-kubeconfig", "", "kubeconfig of the broker (required)")
	brokerContext := fs.String("broker-context", "", "context in --broker-kubeconfig")
	brokerNS := fs.String("broker-namespace", brokerv1.DefaultBrokerNamespace, "namespace of the cluster records on the broker")
	clusterID := fs.String("cluster-id", "", "this cluster's id (required)")
	device := fs.String("device", "isthmus0", "WireGuard interface name, unique on the host")
	impl := fs.String("wireguard-implementation", string(tunnel.Auto), "auto, kernel or userspace (wireguard-go embedded in this process)")
	mtu := fs.Int("mtu", 1420, "MTU of the WireGuard interface")
	listenPort := fs.Int("listen-port", 51820, "UDP port WireGuard listens on")
	endpoint := fs.String("endpoint", "", "ip:port other clusters' gateways reach this one at (required)")
	probePort := fs.Int("probe-port", 51821, "UDP port of the echo probe on the tunnel address")
	keepalive := fs.Duration("keepalive", 10*time.Second, "persistent keepalive of every peer (at least 1s; it is never off)")
	resync := fs.Duration("resync", 30*time.Second, "how often peers and routes are checked against the records even without changes")
	probeInterval := fs.Duration("probe-interval", time.Second, "how often each peer is probed through the tunnel")
	statusInterval := fs.Duration("status-interval", 10*time.Second, "least time between two writes of the record's tunnel conditions")
	routeProtocol := fs.Int("route-protocol", 158, "route protocol id marking this role's routes (5-255)")
	routeTable := fs.Int("route-table", 254, "routing table of the routes to remote clusters (254 is main)")
	keyNS := fs.String("key-namespace", "isthmus-system", "namespace of the key Secret in this cluster")
	keySecret := fs.String("key-secret", "isthmus-tunnel-key", "name of the Secret holding the cluster's WireGuard private key, shared by its gateway replicas")
	addr := fs.String("metrics-addr", ":9093", "address of /metrics, /healthz and /readyz (empty: none)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *brokerKubeconfig == "" {
		return errors.New("--broker-kubeconfig is required")
	}
	implementation, err := tunnel.ParseImplementation(*impl)
	if err != nil {
		return err
	}
	ep, err := netip.ParseAddrPort(*endpoint)
	if err != nil {
		return fmt.Errorf("--endpoint %q: want ip:port: %w", *endpoint, err)
	}
	cfg := tunnel.Config{
		ClusterID: *clusterID, BrokerNamespace: *brokerNS, Device: *device, Implementation: implementation,
		MTU: *mtu, ListenPort: *listenPort, Endpoint: ep, ProbePort: *probePort, Keepalive: *keepalive,
		Resync: *resync, ProbeInterval: *probeInterval, StatusInterval: *statusInterval,
		RouteProtocol: *routeProtocol, RouteTable: *routeTable, KeyNamespace: *keyNS, KeySecret: *keySecret,
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	localCfg, err := kube.Config(*kubeconfig, *kubeContext)
	if err != nil {
		return fmt.Errorf("loading this cluster's kubeconfig: %w", err)
	}
	brokerCfg, err := kube.Config(*brokerKubeconfig, *brokerContext)
	if err != nil {
		return fmt.Errorf("loading the broker kubeconfig: %w", err)
	}
	local, err := kubernetes.NewForConfig(localCfg)
	if err != nil {
		return fmt.Errorf("building this cluster's client: %w", err)
	}
	broker, err := dynamic.NewForConfig(brokerCfg)
	if err != nil {
		return fmt.Errorf("building the broker client: %w", err)
	}
	t, err := tunnel.New(cfg, broker, local, log)
	if err != nil {
		return err
	}
	reg := serve.NewRegistry()
	if err := t.Register(reg); err != nil {
		return fmt.Errorf("registering tunnel metrics: %w", err)
	}
	health := serve.NewHealth()
	health.Add("tunnel", t.Ready)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- serve.Run(ctx, *addr, reg, health, log) }()
	runErr := t.Run(ctx)
	cancel()
	return errors.Join(runErr, <-served)
}
