package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/isthmus-dev/isthmus/cmd/internal/kube"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/setup"
)

// joinCommand is `isthmusctl join`: the current context becomes a member
// of the broker on --broker-context (or --broker-kubeconfig).
func joinCommand(k *kubeFlags) *cobra.Command {
	var brokerKubeconfig, brokerContext, brokerServer, brokerNamespace, clusterID string
	var podCIDRs, serviceCIDRs, exportNamespaces string
	var tokenTTL, intermediateTTL time.Duration
	var domain string
	var maxExports, maxSlices int32
	var dry dryRun
	cmd := &cobra.Command{
		Use:     "join",
		Short:   "join a member cluster (the current context) to the broker (idempotent)",
		Example: `  isthmusctl join --context east --broker-context hub --cluster-id east --pod-cidrs 10.244.0.0/16 --service-cidrs 10.96.0.0/16`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := k.noNamespace(cmd, "join writes to "+brokerv1.MemberNamespace+"; --broker-namespace names the broker's"); err != nil {
				return err
			}
			memberKubeconfig := *k.KubeConfig
			if brokerKubeconfig == "" {
				brokerKubeconfig = memberKubeconfig
			}
			if brokerContext == "" && brokerKubeconfig == memberKubeconfig {
				return errors.New("--broker-context is required when the hub and the member share a kubeconfig")
			}
			var hub *setup.Clients
			var err error
			if brokerKubeconfig == memberKubeconfig {
				hub, err = k.setupClients(brokerContext)
			} else {
				hub, err = otherKubeconfig(brokerKubeconfig, brokerContext)
			}
			if err != nil {
				return err
			}
			member, err := k.setupClients("")
			if err != nil {
				return err
			}
			stdout := cmd.OutOrStdout()
			opts := setup.JoinOptions{
				ClusterID:        clusterID,
				BrokerNamespace:  brokerNamespace,
				BrokerServer:     brokerServer,
				TokenTTL:         tokenTTL,
				Certificates:     newPKI(defaultRootTTL, intermediateTTL),
				ClustersetDomain: domain,
				PodCIDRs:         splitList(podCIDRs),
				ServiceCIDRs:     splitList(serviceCIDRs),
				ExportNamespaces: splitList(exportNamespaces),
			}
			if f := cmd.Flags(); f.Changed("max-exports") {
				opts.MaxExports = &maxExports
			}
			if f := cmd.Flags(); f.Changed("max-endpoint-slices") {
				opts.MaxEndpointSlices = &maxSlices
			}
			if dry.enabled {
				return dry.join(cmd.Context(), hub, member, opts, stdout, cmd.ErrOrStderr())
			}
			id, err := setup.Join(cmd.Context(), hub, member, opts, stdout)
			if err != nil {
				return fmt.Errorf("joining %s to the broker at %s: %w", member.Config.Host, hub.Config.Host, err)
			}
			fmt.Fprintf(stdout, "cluster %s joined the broker at %s\n", id, hub.Config.Host)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&brokerKubeconfig, "broker-kubeconfig", "", "kubeconfig of the hub cluster (default: as --kubeconfig)")
	f.StringVar(&brokerContext, "broker-context", "", "kubeconfig context of the hub cluster")
	f.StringVar(&brokerServer, "broker-server", "", "broker API address as the member reaches it (default: the hub kubeconfig's)")
	f.StringVar(&brokerNamespace, "broker-namespace", brokerv1.DefaultBrokerNamespace, "broker namespace")
	f.StringVar(&clusterID, "cluster-id", "", "the member's cluster id, a DNS label (default: its cluster.clusterset.k8s.io ClusterProperty)")
	f.DurationVar(&tokenTTL, "token-ttl", 90*24*time.Hour, "lifetime of the member's broker token; join renews it after half")
	f.DurationVar(&intermediateTTL, "intermediate-ttl", 365*24*time.Hour, "lifetime of the member's intermediate CA; join renews it after half")
	f.StringVar(&podCIDRs, "pod-cidrs", "", "comma-separated pod ranges approved for the member: the broker refuses it any other pod range, and endpoints outside them (with --service-cidrs; default: keep what the broker holds)")
	f.StringVar(&serviceCIDRs, "service-cidrs", "", "comma-separated Service ranges approved for the member (with --pod-cidrs)")
	f.StringVar(&exportNamespaces, "export-namespaces", "", "comma-separated namespaces the member may export from (default: keep what the broker holds; any when never set)")
	f.Int32Var(&maxExports, "max-exports", brokerv1.DefaultMaxExports, "most ExportedServices the member may hold on the broker, enforced once the hub's record counter (isthmus hub-quota) has counted them (default: keep what the broker holds; the default shown when never set)")
	f.Int32Var(&maxSlices, "max-endpoint-slices", brokerv1.DefaultMaxEndpointSlices, "most broker EndpointSlices the member may hold, counted the same way (default: keep what the broker holds; the default shown when never set)")
	f.StringVar(&domain, "clusterset-domain", brokerv1.DefaultClustersetDomain, "clusterset domain of the root join makes when the broker has none yet (a broker installed by its Helm chart)")
	dry.register(f)
	_ = cmd.RegisterFlagCompletionFunc("broker-context", k.completeContexts)
	return cmd
}

// otherKubeconfig is the clients of a context in a kubeconfig other than
// --kubeconfig (join --broker-kubeconfig).
func otherKubeconfig(path, context string) (*setup.Clients, error) {
	cfg, err := kube.Config(path, context)
	if err != nil {
		return nil, err
	}
	return setup.NewClients(cfg)
}
