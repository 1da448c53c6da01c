package main

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/rest"

	"github.com/isthmus-dev/isthmus/cmd/internal/kube"
	brokerclient "github.com/isthmus-dev/isthmus/mcs/api/broker/generated/clientset/versioned"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/setup"
)

// kubeFlags are kubectl's connection flags, on the root command so every
// command takes them in the same place with the same meaning.
type kubeFlags struct {
	*genericclioptions.ConfigFlags
	// log is the logger --log-level and --log-format make, set before
	// any command runs: commands log through it what is not their report.
	log *slog.Logger
}

func newKubeFlags() *kubeFlags {
	return &kubeFlags{ConfigFlags: genericclioptions.NewConfigFlags(false), log: slog.New(slog.DiscardHandler)}
}

func (k *kubeFlags) register(root *cobra.Command) {
	k.AddFlags(root.PersistentFlags())
	_ = root.RegisterFlagCompletionFunc("context", k.completeContexts)
}

// config is the client configuration of the current context (--context,
// else the kubeconfig's), with every flag kubectl would apply.
func (k *kubeFlags) config() (*rest.Config, error) {
	cfg, err := k.ToRESTConfig()
	if err != nil {
		return nil, k.loadError(*k.Context, err)
	}
	return cfg, nil
}

// configFor is the configuration of another context of the same
// kubeconfig (--broker-context, --contexts). --as, --as-group and
// --request-timeout apply to it too; --server, --token, --user and
// --cluster name parts of the current context and do not.
func (k *kubeFlags) configFor(name string) (*rest.Config, error) {
	if name == "" || name == *k.Context {
		return k.config()
	}
	other := genericclioptions.NewConfigFlags(false)
	other.KubeConfig, other.Context = k.KubeConfig, &name
	other.Impersonate, other.ImpersonateGroup, other.ImpersonateUID = k.Impersonate, k.ImpersonateGroup, k.ImpersonateUID
	other.Timeout, other.Insecure, other.DisableCompression = k.Timeout, k.Insecure, k.DisableCompression
	cfg, err := other.ToRESTConfig()
	if err != nil {
		return nil, k.loadError(name, err)
	}
	return cfg, nil
}

func (k *kubeFlags) loadError(context string, err error) error {
	where := *k.KubeConfig
	if where == "" {
		where = "the default kubeconfig"
	}
	if context != "" {
		where += ", context " + context
	}
	return fmt.Errorf("loading client configuration from %s: %w", where, err)
}

// namespace is -n when given, else def; an empty def means the context's
// namespace, else "default", as kubectl picks it.
func (k *kubeFlags) namespace(def string) (string, error) {
	if *k.Namespace != "" {
		return *k.Namespace, nil
	}
	if def != "" {
		return def, nil
	}
	ns, _, err := k.ToRawKubeConfigLoader().Namespace()
	if err != nil || ns == "" {
		return "default", nil
	}
	return ns, nil
}

// noNamespace refuses -n in a command whose objects have fixed homes.
func (k *kubeFlags) noNamespace(cmd *cobra.Command, why string) error {
	if *k.Namespace != "" {
		return fmt.Errorf("%s: -n does not apply: %s", cmd.CommandPath(), why)
	}
	return nil
}

// clients are the clients of the current context or another.
func (k *kubeFlags) clients(context string) (*kube.Clients, error) {
	cfg, err := k.configFor(context)
	if err != nil {
		return nil, err
	}
	return kube.NewClients(cfg, 0, 0)
}

// setupClients are what mcs/setup takes, for a context.
func (k *kubeFlags) setupClients(context string) (*setup.Clients, error) {
	cfg, err := k.configFor(context)
	if err != nil {
		return nil, err
	}
	return setup.NewClients(cfg)
}

// brokerClients are the broker's clients: Kubernetes' own and the typed
// broker API's.
type brokerClients struct {
	*kube.Clients
	API brokerclient.Interface
}

// memberAndBroker builds the clients of a member cluster (a context, ""
// for the current one) and of its broker, through the credential join
// stored unless brokerKubeconfig is given, and returns the broker
// namespace.
func (k *kubeFlags) memberAndBroker(ctx context.Context, context, brokerKubeconfig string) (local *kube.Clients, broker *brokerClients, ns string, err error) {
	if local, err = k.clients(context); err != nil {
		return nil, nil, "", err
	}
	brokerCfg, ns, err := setup.BrokerConfig(ctx, local.Kube, brokerKubeconfig)
	if err != nil {
		return nil, nil, "", err
	}
	// The stored credential is the member's own; --request-timeout
	// bounds its requests as it bounds the member's.
	brokerCfg.Timeout = local.Config.Timeout
	broker = &brokerClients{}
	if broker.Clients, err = kube.NewClients(brokerCfg, 0, 0); err != nil {
		return nil, nil, "", err
	}
	broker.API = broker.BrokerAPI
	return local, broker, ns, nil
}

// completeContexts offers the kubeconfig's context names.
func (k *kubeFlags) completeContexts(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	raw, err := k.ToRawKubeConfigLoader().RawConfig()
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	return contextNames(raw.Contexts), cobra.ShellCompDirectiveNoFileComp
}

func contextNames[V any](m map[string]V) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// broker is the broker's clients and namespace: through brokerContext
// (the hub, as its admin) when given, else through the current member's
// stored credential (or brokerKubeconfig).
func (k *kubeFlags) broker(ctx context.Context, brokerContext, brokerKubeconfig string) (*brokerClients, string, error) {
	if brokerContext == "" {
		_, b, ns, err := k.memberAndBroker(ctx, "", brokerKubeconfig)
		return b, ns, err
	}
	c, err := k.clients(brokerContext)
	if err != nil {
		return nil, "", err
	}
	return &brokerClients{Clients: c, API: c.BrokerAPI}, brokerv1.DefaultBrokerNamespace, nil
}

// completeContextList completes the last item of a comma-separated list
// of contexts (--contexts a,b,…).
func (k *kubeFlags) completeContextList(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	names, directive := k.completeContexts(cmd, args, toComplete)
	typed := toComplete[:strings.LastIndex(toComplete, ",")+1]
	for i := range names {
		names[i] = typed + names[i]
	}
	return names, directive | cobra.ShellCompDirectiveNoSpace
}
