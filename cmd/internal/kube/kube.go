// Package kube loads client configurations the way kubectl does, for the
// Isthmus binaries: an explicit --kubeconfig file, else $KUBECONFIG, else
// ~/.kube/config, else the in-cluster service account; and --context to
// pick a context.
package kube

import (
	"fmt"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Config returns the client configuration for a kubeconfig path and context;
// empty values mean kubectl's defaults.
func Config(kubeconfig, context string) (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules,
		&clientcmd.ConfigOverrides{CurrentContext: context}).ClientConfig()
	if err != nil {
		where := kubeconfig
		if where == "" {
			where = "the default kubeconfig"
		}
		if context != "" {
			where += ", context " + context
		}
		return nil, fmt.Errorf("loading client configuration from %s: %w", where, err)
	}
	return cfg, nil
}

// ConfigAndNamespace is Config and the namespace the context names, else
// "default", as kubectl picks it.
func ConfigAndNamespace(kubeconfig, context string) (*rest.Config, string, error) {
	cfg, err := Config(kubeconfig, context)
	if err != nil {
		return nil, "", err
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	ns, _, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules,
		&clientcmd.ConfigOverrides{CurrentContext: context}).Namespace()
	if err != nil || ns == "" {
		ns = "default"
	}
	return cfg, ns, nil
}
