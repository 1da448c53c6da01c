package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/setup"
)

// brokerCommand is `isthmusctl broker install`: the broker on the hub
// cluster (the current context), in -n (default isthmus-broker).
func brokerCommand(k *kubeFlags) *cobra.Command {
	broker := &cobra.Command{Use: "broker", Short: "manage the broker on the hub cluster", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() }}
	var domain, rootCert, rootKey string
	var rootTTL time.Duration
	install := &cobra.Command{
		Use:   "install",
		Short: "install the broker on the hub cluster (idempotent; -n names its namespace, default " + brokerv1.DefaultBrokerNamespace + ")",
		Example: `  isthmusctl broker install --context hub
  isthmusctl broker install --context hub --root-ca-cert root.pem --root-ca-key root-key.pem`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			namespace, err := k.namespace(brokerv1.DefaultBrokerNamespace)
			if err != nil {
				return err
			}
			opts := setup.BrokerOptions{Namespace: namespace, ClustersetDomain: domain, Certificates: newPKI(rootTTL, 0)}
			if (rootCert == "") != (rootKey == "") {
				return errors.New("--root-ca-cert and --root-ca-key go together")
			}
			if rootCert != "" {
				if opts.RootCACert, err = os.ReadFile(rootCert); err != nil {
					return fmt.Errorf("reading --root-ca-cert: %w", err)
				}
				if opts.RootCAKey, err = os.ReadFile(rootKey); err != nil {
					return fmt.Errorf("reading --root-ca-key: %w", err)
				}
			}
			hub, err := k.setupClients("")
			if err != nil {
				return err
			}
			stdout := cmd.OutOrStdout()
			if err := setup.InstallBroker(cmd.Context(), hub, opts, stdout); err != nil {
				return fmt.Errorf("installing the broker on %s: %w", hub.Config.Host, err)
			}
			fmt.Fprintf(stdout, "broker ready in namespace %s of %s\n", namespace, hub.Config.Host)
			return nil
		},
	}
	f := install.Flags()
	f.StringVar(&domain, "clusterset-domain", brokerv1.DefaultClustersetDomain, "parent of every cluster's SPIFFE trust domain <cluster-id>.<clusterset-domain>")
	f.StringVar(&rootCert, "root-ca-cert", "", "PEM file of your own root CA (its chain up to a self-signed certificate) to use instead of a new one; with --root-ca-key")
	f.StringVar(&rootKey, "root-ca-key", "", "PEM file of the private key of --root-ca-cert")
	f.DurationVar(&rootTTL, "root-ttl", defaultRootTTL, "lifetime of a new clusterset root")
	broker.AddCommand(install)
	return broker
}
