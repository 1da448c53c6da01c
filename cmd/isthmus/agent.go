package main

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/isthmus-dev/isthmus/cmd/internal/kube"
	"github.com/isthmus-dev/isthmus/cmd/internal/serve"
	"github.com/isthmus-dev/isthmus/mcs/agent"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/setup"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = "dev"

// runAgent is `isthmus agent`: the MCS agent of one member cluster.
func runAgent(ctx context.Context, args []string, log *slog.Logger) error {
	fs := flag.NewFlagSet("isthmus agent", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig of this cluster (default: in-cluster or $KUBECONFIG)")
	kubeContext := fs.String("context", "", "kubeconfig context of this cluster")
	brokerKubeconfig := fs.String("broker-kubeconfig", "", "kubeconfig for the broker (default: the isthmus-system/isthmus-broker Secret that isthmusctl join wrote)")
	brokerNamespace := fs.String("broker-namespace", "", "broker namespace (default: the broker kubeconfig's, else isthmus-broker)")
	clusterID := fs.String("cluster-id", "", "this cluster's id (default: its cluster.clusterset.k8s.io ClusterProperty)")
	region := fs.String("region", "", "this cluster's region, for locality-aware failover")
	zone := fs.String("zone", "", "this cluster's zone")
	podCIDRs := fs.String("pod-cidrs", "", "comma-separated pod CIDRs of this cluster, published to the clusterset")
	serviceCIDRs := fs.String("service-cidrs", "", "comma-separated Service CIDRs of this cluster")
	leaseDuration := fs.Duration("lease-duration", 30*time.Second, "validity of this cluster's heartbeat; a peer silent this long is unhealthy")
	withdrawAfter := fs.Duration("withdraw-after", 5*time.Minute, "how long a peer may be silent before its exports leave this cluster's imports")
	metricsAddr := fs.String("metrics-addr", "127.0.0.1:9470", "address for /metrics, /healthz and /readyz (empty: none)")
	qps := fs.Float64("kube-api-qps", 50, "requests per second to each apiserver (client-go's default of 5 throttles a clusterset)")
	burst := fs.Int("kube-api-burst", 100, "request burst to each apiserver")
	leaderElect := fs.Bool("leader-elect", true, "elect one writing leader among the agent's replicas")
	leaderNamespace := fs.String("leader-elect-namespace", setup.MemberNamespace, "namespace of this cluster holding the election Lease")
	dataplane := fs.String("dataplane", agent.DataplaneDirect, "where derived Services send ClusterSetIP traffic: direct (to the endpoints, chosen by locality) or gateway (to the local east-west gateway's egress ports)")
	gatewayService := fs.String("gateway-service", setup.MemberNamespace+"/isthmus-gateway", "NAMESPACE/NAME of the local Service in front of the east-west gateway pods (gateway mode)")
	egressPorts := fs.String("egress-ports", fmt.Sprintf("%d-%d", brokerv1.DefaultEgressPortMin, brokerv1.DefaultEgressPortMax), "MIN-MAX: the gateway egress ports the agent allocates to imports (gateway mode)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	gwNamespace, gwName, ok := strings.Cut(*gatewayService, "/")
	if !ok || gwNamespace == "" || gwName == "" {
		return fmt.Errorf("--gateway-service=%q: want NAMESPACE/NAME", *gatewayService)
	}
	egressMin, egressMax, err := agent.ParseEgressPortRange(*egressPorts)
	if err != nil {
		return fmt.Errorf("--egress-ports: %w", err)
	}

	localCfg, err := kube.Config(*kubeconfig, *kubeContext)
	if err != nil {
		return err
	}
	localCfg.QPS, localCfg.Burst = float32(*qps), *burst
	local, err := kubernetes.NewForConfig(localCfg)
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
	brokerCfg, ns, err := setup.BrokerConfig(ctx, local, *brokerKubeconfig)
	if err != nil {
		return err
	}
	if *brokerNamespace != "" {
		ns = *brokerNamespace
	}
	brokerCfg.QPS, brokerCfg.Burst = float32(*qps), *burst
	broker, err := kubernetes.NewForConfig(brokerCfg)
	if err != nil {
		return fmt.Errorf("making the broker client: %w", err)
	}
	brokerDyn, err := dynamic.NewForConfig(brokerCfg)
	if err != nil {
		return fmt.Errorf("making the broker dynamic client: %w", err)
	}

	reg := serve.NewRegistry()
	health := serve.NewHealth()
	cfg := agent.Config{
		ClusterID: id, BrokerNamespace: ns, Region: *region, Zone: *zone,
		PodCIDRs: split(*podCIDRs), ServiceCIDRs: split(*serviceCIDRs), Version: version,
		Local: local, LocalMCS: localMCS, Broker: broker, BrokerDynamic: brokerDyn,
		LeaseDuration: *leaseDuration, WithdrawAfter: *withdrawAfter,
		Dataplane: *dataplane, GatewayNamespace: gwNamespace, GatewayName: gwName,
		EgressPortMin: egressMin, EgressPortMax: egressMax,
		Log: log, Registry: reg,
	}
	if *leaderElect {
		cfg.LeaderElectionNamespace, cfg.Identity = *leaderNamespace, identity()
	}
	a, err := agent.New(cfg)
	if err != nil {
		return err
	}
	health.Add("agent", a.Ready)
	log.Info("starting the MCS agent", "cluster", id, "broker", brokerCfg.Host, "brokerNamespace", ns, "dataplane", *dataplane)
	errs := make(chan error, 2)
	go func() { errs <- serve.Run(ctx, *metricsAddr, reg, health, log) }()
	go func() { errs <- a.Run(ctx) }()
	err = <-errs
	if err == nil {
		err = <-errs
	}
	return err
}

// identity names this replica in the leader election: the host (the pod's
// name in a cluster) and a random suffix, so restarts never collide.
func identity() string {
	host, _ := os.Hostname()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%s-%x", host, b)
}

func split(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
