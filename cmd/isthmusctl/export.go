package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/isthmus-dev/isthmus/cmd/internal/kube"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// export is `isthmusctl export <svc>` and `isthmusctl unexport <svc>`:
// they create and delete the ServiceExport next to the Service.
func export(ctx context.Context, unexport bool, args []string, stdout, stderr io.Writer) error {
	verb := "export"
	if unexport {
		verb = "unexport"
	}
	fs := flag.NewFlagSet("isthmusctl "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig of the member cluster (default: $KUBECONFIG or ~/.kube/config)")
	kubeContext := fs.String("context", "", "kubeconfig context of the member cluster")
	namespace := fs.String("n", "", "namespace of the Service (default: the context's, else default)")
	locality := fs.String("locality", "", "how importers pick clusters: local (default), spread or remote-first (export only)")
	// The service name comes first, as in kubectl; flags may follow it.
	if len(args) == 0 || args[0] == "" || args[0][0] == '-' {
		if err := fs.Parse(args); err != nil {
			return err
		}
		return fmt.Errorf("usage: isthmusctl %s <service> [-n namespace]", verb)
	}
	name := args[0]
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	switch *locality {
	case "", "local", "spread", "remote-first":
	default:
		return fmt.Errorf("--locality %q: want local, spread or remote-first", *locality)
	}
	cfg, ns, err := kube.ConfigAndNamespace(*kubeconfig, *kubeContext)
	if err != nil {
		return err
	}
	if *namespace != "" {
		ns = *namespace
	}
	c, err := kube.NewClients(cfg, 0, 0)
	if err != nil {
		return err
	}
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
		fmt.Fprintf(stderr, "warning: no Service %s/%s yet; the export stays Valid=False until it exists\n", ns, name)
	}
	se := &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
	if *locality != "" {
		se.Annotations = map[string]string{brokerv1.AnnotationLocality: *locality}
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
}
