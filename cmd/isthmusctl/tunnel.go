package main

import (
	"fmt"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/tunnel"
)

// tunnelCommand is `isthmusctl tunnel rotate-key`: a new WireGuard key
// for one member cluster, written to its key Secret (in -n, default
// isthmus-system, where `isthmus tunnel --key-namespace` reads it).
func tunnelCommand(k *kubeFlags) *cobra.Command {
	parent := &cobra.Command{Use: "tunnel", Short: "manage a member's WireGuard tunnel", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() }}
	var secret string
	rotate := &cobra.Command{
		Use:   "rotate-key",
		Short: "give a member cluster a new WireGuard key (-n names the key Secret's namespace, default " + brokerv1.MemberNamespace + ")",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			namespace, err := k.namespace(brokerv1.MemberNamespace)
			if err != nil {
				return err
			}
			cfg, err := k.config()
			if err != nil {
				return err
			}
			c, err := kubernetes.NewForConfig(cfg)
			if err != nil {
				return fmt.Errorf("building a client for %s: %w", cfg.Host, err)
			}
			r, err := tunnel.RotateKey(cmd.Context(), c, namespace, secret)
			if err != nil {
				return err
			}
			stdout := cmd.OutOrStdout()
			fmt.Fprintf(stdout, "rotated the WireGuard key in %s/%s: %s -> %s (generation %d)\n", namespace, secret, r.OldPublic, r.NewPublic, r.Generation)
			fmt.Fprintln(stdout, "the active gateway takes it at its next resync and publishes it; other clusters follow through the broker")
			return nil
		},
	}
	rotate.Flags().StringVar(&secret, "secret", "isthmus-tunnel-key", "name of the key Secret (isthmus tunnel --key-secret)")
	parent.AddCommand(rotate)
	return parent
}
