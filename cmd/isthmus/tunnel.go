package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

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
	leaderElect := fs.Bool("leader-elect", true, "run the device only while holding the gateway Lease in --key-namespace, so one replica at a time is active")
	identity := fs.String("leader-elect-identity", "", "this replica's name in the Lease (empty: the host name)")
	leaseDuration := fs.Duration("leader-elect-lease-duration", 15*time.Second, "how long a dead leader's Lease blocks a standby")
	renewDeadline := fs.Duration("leader-elect-renew-deadline", 10*time.Second, "how long the leader retries renewing before it gives up")
	retryPeriod := fs.Duration("leader-elect-retry-period", 2*time.Second, "how often a standby tries to take the Lease")
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
	var runErr error
	if !*leaderElect {
		runErr = t.Run(ctx)
	} else {
		runErr = runElected(ctx, local, *keyNS, "isthmus-tunnel-"+*clusterID, *identity,
			[3]time.Duration{*leaseDuration, *renewDeadline, *retryPeriod}, t.Run, log)
	}
	cancel()
	return errors.Join(runErr, <-served)
}

// runElected runs fn only while this replica holds the gateway Lease: the
// replicas share one key, and two active devices with it would make every
// peer roam back and forth between them. A standby takes over when the
// leader's Lease expires, or at once when the leader shuts down cleanly
// (it releases the Lease). Losing the Lease stops fn and ends the process.
func runElected(ctx context.Context, c kubernetes.Interface, ns, name, identity string, timing [3]time.Duration,
	fn func(context.Context) error, log *slog.Logger) error {
	if identity == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("finding a leader election identity: %w", err)
		}
		identity = h
	}
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: ns, Name: name},
		Client:     c.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: identity},
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// fn runs on the elector's goroutine; it must finish its clean
	// shutdown (peers, routes, device) before the process exits.
	var runErr error
	var started atomic.Bool
	done := make(chan struct{})
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock: lock, Name: name, ReleaseOnCancel: true,
		LeaseDuration: timing[0], RenewDeadline: timing[1], RetryPeriod: timing[2],
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				started.Store(true)
				defer close(done)
				log.Info("holding the gateway Lease; this replica is active", "lease", ns+"/"+name, "identity", identity)
				runErr = fn(ctx)
				cancel()
			},
			OnStoppedLeading: func() {
				log.Info("not holding the gateway Lease", "lease", ns+"/"+name, "identity", identity)
				cancel()
			},
			OnNewLeader: func(leader string) {
				if leader != identity {
					log.Info("standing by", "leader", leader)
				}
			},
		},
	})
	if err != nil {
		return fmt.Errorf("setting up leader election on Lease %s/%s: %w", ns, name, err)
	}
	le.Run(ctx)
	if started.Load() {
		<-done
	}
	return runErr
}
