package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"k8s.io/client-go/kubernetes"

	"github.com/isthmus-dev/isthmus/cmd/internal/kube"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/tunnel"
)

// tunnelRotateKey is `isthmusctl tunnel rotate-key`: a new WireGuard key
// for one member cluster, written to its key Secret.
func tunnelRotateKey(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("isthmusctl tunnel rotate-key", flag.ContinueOnError)
	fs.SetOutput(stderr)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig of the member cluster (default: $KUBECONFIG or ~/.kube/config)")
	kubeContext := fs.String("context", "", "kubeconfig context of the member cluster")
	namespace := fs.String("namespace", brokerv1.MemberNamespace, "namespace of the key Secret (isthmus tunnel --key-namespace)")
	secret := fs.String("secret", "isthmus-tunnel-key", "name of the key Secret (isthmus tunnel --key-secret)")
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg, err := kube.Config(*kubeconfig, *kubeContext)
	if err != nil {
		return err
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("building a client for %s: %w", cfg.Host, err)
	}
	r, err := tunnel.RotateKey(ctx, c, *namespace, *secret)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "rotated the WireGuard key in %s/%s: %s -> %s (generation %d)\n", *namespace, *secret, r.OldPublic, r.NewPublic, r.Generation)
	fmt.Fprintln(stdout, "the active gateway takes it at its next resync and publishes it; other clusters follow through the broker")
	return nil
}
