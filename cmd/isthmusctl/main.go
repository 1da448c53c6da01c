// Command isthmusctl is the operator's CLI for an Isthmus clusterset:
// `isthmusctl broker install` prepares the hub cluster, `isthmusctl join`
// makes a cluster a member (both idempotent, printing what they did),
// `export`/`unexport` write a ServiceExport, `status` and `diagnose` show
// the clusterset and one service end to end (-o table|yaml|json), and
// `demo up|down` runs the local demo. Every command takes --kubeconfig and
// --context like kubectl. Broker install also makes the clusterset root
// CA (or imports the operator's), and join issues the member's
// intermediate CA with it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/isthmus-dev/isthmus/cmd/internal/kube"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/setup"
)

const usage = `isthmusctl operates an Isthmus clusterset.

Usage:
  isthmusctl broker install [flags]   install the broker on the hub cluster
  isthmusctl join [flags]             join a member cluster to the broker
  isthmusctl join --dry-run [-o yaml|json] [--output-dir DIR]  print the member's manifests for a GitOps tool instead
  isthmusctl tunnel rotate-key [flags] give a member cluster a new WireGuard key
  isthmusctl export <svc> [-n ns]     export a Service to the clusterset (writes its ServiceExport)
  isthmusctl unexport <svc> [-n ns]   withdraw it (deletes the ServiceExport)
  isthmusctl status [-o table|yaml|json]  clusters, health, heartbeats, tunnels, exports, imports
  isthmusctl diagnose <svc>.<ns>      walk one service end to end and say what is wrong
  isthmusctl demo up|down             run the local demo clusterset (root; KEEP=1 keeps it up)

Run "isthmusctl <command> -h" for a command's flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "isthmusctl:", err)
		}
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	switch {
	case len(args) >= 2 && args[0] == "broker" && args[1] == "install":
		return brokerInstall(ctx, args[2:], stdout, stderr)
	case len(args) >= 1 && args[0] == "join":
		return join(ctx, args[1:], stdout, stderr)
	case len(args) >= 2 && args[0] == "tunnel" && args[1] == "rotate-key":
		return tunnelRotateKey(ctx, args[2:], stdout, stderr)
	case len(args) >= 1 && (args[0] == "export" || args[0] == "unexport"):
		return export(ctx, args[0] == "unexport", args[1:], stdout, stderr)
	case len(args) >= 1 && args[0] == "status":
		return status(ctx, args[1:], stdout, stderr)
	case len(args) >= 1 && args[0] == "diagnose":
		return diagnose(ctx, args[1:], stdout, stderr)
	case len(args) >= 1 && args[0] == "demo":
		return demo(ctx, args[1:], stdout, stderr)
	case len(args) >= 1 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help"):
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return errors.New("unknown command")
	}
}

func brokerInstall(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("isthmusctl broker install", flag.ContinueOnError)
	fs.SetOutput(stderr)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig of the hub cluster (default: $KUBECONFIG or ~/.kube/config)")
	kubeContext := fs.String("context", "", "kubeconfig context of the hub cluster")
	namespace := fs.String("namespace", brokerv1.DefaultBrokerNamespace, "broker namespace")
	domain := fs.String("clusterset-domain", brokerv1.DefaultClustersetDomain, "parent of every cluster's SPIFFE trust domain <cluster-id>.<clusterset-domain>")
	rootCert := fs.String("root-ca-cert", "", "PEM file of your own root CA (its chain up to a self-signed certificate) to use instead of a new one; with --root-ca-key")
	rootKey := fs.String("root-ca-key", "", "PEM file of the private key of --root-ca-cert")
	rootTTL := fs.Duration("root-ttl", defaultRootTTL, "lifetime of a new clusterset root")
	if err := parse(fs, args); err != nil {
		return err
	}
	opts := setup.BrokerOptions{Namespace: *namespace, ClustersetDomain: *domain, Certificates: newPKI(*rootTTL, 0)}
	if (*rootCert == "") != (*rootKey == "") {
		return errors.New("--root-ca-cert and --root-ca-key go together")
	}
	if *rootCert != "" {
		var err error
		if opts.RootCACert, err = os.ReadFile(*rootCert); err != nil {
			return fmt.Errorf("reading --root-ca-cert: %w", err)
		}
		if opts.RootCAKey, err = os.ReadFile(*rootKey); err != nil {
			return fmt.Errorf("reading --root-ca-key: %w", err)
		}
	}
	hub, err := clientsFor(*kubeconfig, *kubeContext)
	if err != nil {
		return err
	}
	if err := setup.InstallBroker(ctx, hub, opts, stdout); err != nil {
		return fmt.Errorf("installing the broker on %s: %w", hub.Config.Host, err)
	}
	fmt.Fprintf(stdout, "broker ready in namespace %s of %s\n", *namespace, hub.Config.Host)
	return nil
}

func join(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("isthmusctl join", flag.ContinueOnError)
	fs.SetOutput(stderr)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig of the joining member cluster (default: $KUBECONFIG or ~/.kube/config)")
	kubeContext := fs.String("context", "", "kubeconfig context of the joining member cluster")
	brokerKubeconfig := fs.String("broker-kubeconfig", "", "kubeconfig of the hub cluster (default: as --kubeconfig)")
	brokerContext := fs.String("broker-context", "", "kubeconfig context of the hub cluster")
	brokerServer := fs.String("broker-server", "", "broker API address as the member reaches it (default: the hub kubeconfig's)")
	brokerNamespace := fs.String("broker-namespace", brokerv1.DefaultBrokerNamespace, "broker namespace")
	clusterID := fs.String("cluster-id", "", "the member's cluster id, a DNS label (default: its cluster.clusterset.k8s.io ClusterProperty)")
	tokenTTL := fs.Duration("token-ttl", 90*24*time.Hour, "lifetime of the member's broker token; join renews it after half")
	intermediateTTL := fs.Duration("intermediate-ttl", 365*24*time.Hour, "lifetime of the member's intermediate CA; join renews it after half")
	podCIDRs := fs.String("pod-cidrs", "", "comma-separated pod ranges approved for the member: the broker refuses it any other pod range, and endpoints outside them (with --service-cidrs; default: keep what the broker holds)")
	serviceCIDRs := fs.String("service-cidrs", "", "comma-separated Service ranges approved for the member (with --pod-cidrs)")
	exportNamespaces := fs.String("export-namespaces", "", "comma-separated namespaces the member may export from (default: keep what the broker holds; any when never set)")
	domain := fs.String("clusterset-domain", brokerv1.DefaultClustersetDomain, "clusterset domain of the root join makes when the broker has none yet (a broker installed by its Helm chart)")
	var dry dryRun
	dry.register(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if *brokerKubeconfig == "" {
		*brokerKubeconfig = *kubeconfig
	}
	if *brokerContext == "" && *brokerKubeconfig == *kubeconfig {
		return errors.New("--broker-context is required when the hub and the member share a kubeconfig")
	}
	hub, err := clientsFor(*brokerKubeconfig, *brokerContext)
	if err != nil {
		return err
	}
	member, err := clientsFor(*kubeconfig, *kubeContext)
	if err != nil {
		return err
	}
	opts := setup.JoinOptions{
		ClusterID:        *clusterID,
		BrokerNamespace:  *brokerNamespace,
		BrokerServer:     *brokerServer,
		TokenTTL:         *tokenTTL,
		Certificates:     newPKI(defaultRootTTL, *intermediateTTL),
		ClustersetDomain: *domain,
		PodCIDRs:         splitList(*podCIDRs),
		ServiceCIDRs:     splitList(*serviceCIDRs),
		ExportNamespaces: splitList(*exportNamespaces),
	}
	if dry.enabled {
		return dry.join(ctx, hub, member, opts, stdout, stderr)
	}
	id, err := setup.Join(ctx, hub, member, opts, stdout)
	if err != nil {
		return fmt.Errorf("joining %s to the broker at %s: %w", member.Config.Host, hub.Config.Host, err)
	}
	fmt.Fprintf(stdout, "cluster %s joined the broker at %s\n", id, hub.Config.Host)
	return nil
}

// parse parses flags and refuses stray arguments, which are usually a
// mistyped flag.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

func clientsFor(kubeconfig, context string) (*setup.Clients, error) {
	cfg, err := kube.Config(kubeconfig, context)
	if err != nil {
		return nil, err
	}
	return setup.NewClients(cfg)
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}
