package main

import (
	"fmt"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// exportCommand is `isthmusctl export <svc>` or `isthmusctl unexport
// <svc>`: they create and delete the ServiceExport next to the Service in
// -n (default: the context's namespace).
func exportCommand(k *kubeFlags, unexport bool) *cobra.Command {
	verb, short := "export", "export a Service to the clusterset (writes its ServiceExport)"
	if unexport {
		verb, short = "unexport", "withdraw a Service from the clusterset (deletes its ServiceExport)"
	}
	var locality string
	cmd := &cobra.Command{
		Use:     verb + " SERVICE",
		Short:   short,
		Example: fmt.Sprintf("  isthmusctl %s web -n shop --context east", verb),
		Args:    exactName("isthmusctl " + verb + " <service> [-n namespace]"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			switch locality {
			case "", "local", "spread", "remote-first":
			default:
				return fmt.Errorf("--locality %q: want local, spread or remote-first", locality)
			}
			ns, err := k.namespace("")
			if err != nil {
				return err
			}
			c, err := k.clients("")
			if err != nil {
				return err
			}
			ctx, stdout := cmd.Context(), cmd.OutOrStdout()
			exports := c.MCS.MulticlusterV1beta1().ServiceExports(ns)
			if unexport {
				err := exports.Delete(ctx, name, metav1.DeleteOptions{})
				switch {
				case apierrors.IsNotFound(err):
					fmt.Fprintf(stdout, "serviceexport %s/%s not found: nothing to do\n", ns, name)
					return nil
				case err != nil:
					return fmt.Errorf("deleting ServiceExport %s/%s: %w", ns, name, err)
				}
				fmt.Fprintf(stdout, "serviceexport %s/%s deleted: other clusters drop it within seconds\n", ns, name)
				return nil
			}
			if _, err := c.Kube.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{}); apierrors.IsNotFound(err) {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: no Service %s/%s yet; the export stays Valid=False until it exists\n", ns, name)
			}
			se := &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
			if locality != "" {
				se.Annotations = map[string]string{brokerv1.AnnotationLocality: locality}
			}
			if _, err := exports.Create(ctx, se, metav1.CreateOptions{}); err != nil {
				if apierrors.IsAlreadyExists(err) {
					fmt.Fprintf(stdout, "serviceexport %s/%s unchanged\n", ns, name)
					return nil
				}
				return fmt.Errorf("creating ServiceExport %s/%s: %w", ns, name, err)
			}
			fmt.Fprintf(stdout, "serviceexport %s/%s created; `isthmusctl status` shows its conditions\n", ns, name)
			return nil
		},
	}
	if !unexport {
		cmd.Flags().StringVar(&locality, "locality", "", "how importers pick clusters: local (default), spread or remote-first")
		_ = cmd.RegisterFlagCompletionFunc("locality", cobra.FixedCompletions([]string{"local", "spread", "remote-first"}, cobra.ShellCompDirectiveNoFileComp))
	}
	return cmd
}
