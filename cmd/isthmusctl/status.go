package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	"sigs.k8s.io/yaml"

	"github.com/isthmus-dev/isthmus/cmd/internal/kube"
	"github.com/isthmus-dev/isthmus/mcs/agent"
	brokerclient "github.com/isthmus-dev/isthmus/mcs/api/broker/generated/clientset/versioned"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/setup"
)

// statusReport is `isthmusctl status`: the clusterset as the current
// cluster and the broker see it.
type statusReport struct {
	Cluster  string          `json:"cluster"`
	Broker   string          `json:"broker"`
	Clusters []clusterStatus `json:"clusters"`
	Exports  []exportStatus  `json:"exports"`
	Imports  []importStatus  `json:"imports"`
}

type clusterStatus struct {
	ID            string       `json:"id"`
	Region        string       `json:"region,omitempty"`
	Zone          string       `json:"zone,omitempty"`
	Health        string       `json:"health"` // Healthy, Unhealthy, Withdrawn, Unknown
	Reason        string       `json:"reason,omitempty"`
	LastHeartbeat *time.Time   `json:"lastHeartbeat,omitempty"`
	Tunnels       []tunnelPeer `json:"tunnels,omitempty"`
}

type tunnelPeer struct {
	Peer  string        `json:"peer"`
	State string        `json:"state"`
	RTT   time.Duration `json:"rttNanoseconds,omitempty"`
}

type exportStatus struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Valid     string `json:"valid"`
	Ready     string `json:"ready"`
	Conflict  string `json:"conflict"`
	Message   string `json:"message,omitempty"`
}

type importStatus struct {
	Namespace string   `json:"namespace"`
	Name      string   `json:"name"`
	Type      string   `json:"type"`
	IPs       []string `json:"ips,omitempty"`
	Clusters  []string `json:"clusters"`
}

// outputFlag registers -o table|yaml|json.
func outputFlag(fs *flag.FlagSet) *string {
	return fs.String("o", "table", "output format: table, yaml or json")
}

func status(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("isthmusctl status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig of a member cluster (default: $KUBECONFIG or ~/.kube/config)")
	kubeContext := fs.String("context", "", "kubeconfig context of the member cluster")
	brokerKubeconfig := fs.String("broker-kubeconfig", "", "kubeconfig of the broker (default: the credential isthmusctl join stored in the member)")
	output := outputFlag(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := checkOutput(*output); err != nil {
		return err
	}
	local, broker, ns, err := memberAndBroker(ctx, *kubeconfig, *kubeContext, *brokerKubeconfig)
	if err != nil {
		return err
	}
	rep, err := collectStatus(ctx, local, broker, ns)
	if err != nil {
		return err
	}
	rep.Broker = broker.Config.Host + " (namespace " + ns + ")"
	return render(stdout, *output, rep, func(w io.Writer) { rep.table(w, time.Now()) })
}

// memberAndBroker builds the clients of a member cluster and of its
// broker, through the credential join stored unless brokerKubeconfig is
// given, and returns the broker namespace.
// brokerClients are the broker's clients: Kubernetes' own and the typed
// broker API's.
type brokerClients struct {
	*kube.Clients
	API brokerclient.Interface
}

func memberAndBroker(ctx context.Context, kubeconfig, kubeContext, brokerKubeconfig string) (local *kube.Clients, broker *brokerClients, ns string, err error) {
	cfg, err := kube.Config(kubeconfig, kubeContext)
	if err != nil {
		return nil, nil, "", err
	}
	if local, err = kube.NewClients(cfg, 0, 0); err != nil {
		return nil, nil, "", err
	}
	brokerCfg, ns, err := setup.BrokerConfig(ctx, local.Kube, brokerKubeconfig)
	if err != nil {
		return nil, nil, "", err
	}
	broker = &brokerClients{}
	if broker.Clients, err = kube.NewClients(brokerCfg, 0, 0); err != nil {
		return nil, nil, "", err
	}
	if broker.API, err = brokerclient.NewForConfig(broker.Config); err != nil {
		return nil, nil, "", err
	}
	return local, broker, ns, nil
}

func checkOutput(o string) error {
	switch o {
	case "table", "yaml", "json":
		return nil
	}
	return fmt.Errorf("-o %q: want table, yaml or json", o)
}

func render(w io.Writer, format string, v any, table func(io.Writer)) error {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	table(w)
	return nil
}

func collectStatus(ctx context.Context, local *kube.Clients, broker *brokerClients, ns string) (*statusReport, error) {
	rep := &statusReport{}
	if id, err := agent.ClusterID(ctx, local.Dynamic, ""); err == nil {
		rep.Cluster = id
	}
	list, err := broker.API.BrokerV1alpha1().Clusters(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing the clusters on the broker: %w", err)
	}
	for _, c := range list.Items {
		row := clusterStatus{ID: c.Spec.ClusterID, Region: c.Spec.Region, Zone: c.Spec.Zone, Health: "Unknown"}
		for _, cond := range c.Status.Conditions {
			if cond.Type != brokerv1.ClusterConditionHeartbeat {
				continue
			}
			row.Reason = cond.Reason
			switch {
			case cond.Status == metav1.ConditionTrue:
				row.Health = "Healthy"
			case cond.Reason == brokerv1.ReasonWithdrawn:
				row.Health = "Withdrawn"
			default:
				row.Health = "Unhealthy"
			}
		}
		lease, err := broker.Kube.CoordinationV1().Leases(ns).Get(ctx, brokerv1.LeaseName(c.Spec.ClusterID), metav1.GetOptions{})
		if err == nil && lease.Spec.RenewTime != nil {
			t := lease.Spec.RenewTime.Time
			row.LastHeartbeat = &t
		} else if err != nil && !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("reading the heartbeat of %s: %w", c.Spec.ClusterID, err)
		}
		if c.Status.Tunnel != nil {
			for _, p := range c.Status.Tunnel.Peers {
				row.Tunnels = append(row.Tunnels, tunnelPeer{Peer: p.Cluster, State: string(p.State), RTT: time.Duration(p.RTTMicros) * time.Microsecond})
			}
		}
		rep.Clusters = append(rep.Clusters, row)
	}
	sort.Slice(rep.Clusters, func(i, j int) bool { return rep.Clusters[i].ID < rep.Clusters[j].ID })

	exports, err := local.MCS.MulticlusterV1beta1().ServiceExports(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing ServiceExports: %w", err)
	}
	for _, se := range exports.Items {
		row := exportStatus{Namespace: se.Namespace, Name: se.Name, Valid: "Unknown", Ready: "Unknown", Conflict: "Unknown"}
		var msgs []string
		for _, c := range se.Status.Conditions {
			v := string(c.Status)
			switch c.Type {
			case string(mcsv1beta1.ServiceExportConditionValid):
				row.Valid = v
			case string(mcsv1beta1.ServiceExportConditionReady):
				row.Ready = v
			case string(mcsv1beta1.ServiceExportConditionConflict):
				row.Conflict = v
			default:
				continue
			}
			if (c.Type == string(mcsv1beta1.ServiceExportConditionConflict)) == (c.Status == metav1.ConditionTrue) && c.Message != "" {
				msgs = append(msgs, c.Message)
			}
		}
		row.Message = strings.Join(msgs, "; ")
		rep.Exports = append(rep.Exports, row)
	}
	imports, err := local.MCS.MulticlusterV1beta1().ServiceImports(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing ServiceImports: %w", err)
	}
	for _, si := range imports.Items {
		row := importStatus{Namespace: si.Namespace, Name: si.Name, Type: string(si.Spec.Type), IPs: si.Spec.IPs}
		for _, c := range si.Status.Clusters {
			row.Clusters = append(row.Clusters, c.Cluster)
		}
		rep.Imports = append(rep.Imports, row)
	}
	return rep, nil
}

func (r *statusReport) table(w io.Writer, now time.Time) {
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "cluster %s, broker %s\n\n", orDash(r.Cluster), r.Broker)
	fmt.Fprintln(tw, "CLUSTER\tREGION\tZONE\tHEALTH\tLAST HEARTBEAT\tTUNNELS")
	for _, c := range r.Clusters {
		hb := "never"
		if c.LastHeartbeat != nil {
			hb = now.Sub(*c.LastHeartbeat).Round(time.Second).String() + " ago"
		}
		var tunnels []string
		for _, t := range c.Tunnels {
			s := t.Peer + ":" + t.State
			if t.RTT > 0 {
				s += "/" + t.RTT.String()
			}
			tunnels = append(tunnels, s)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", c.ID, orDash(c.Region), orDash(c.Zone), c.Health, hb, orDash(strings.Join(tunnels, " ")))
	}
	fmt.Fprintln(tw, "\nEXPORT\tVALID\tREADY\tCONFLICT\tMESSAGE")
	for _, e := range r.Exports {
		fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%s\t%s\n", e.Namespace, e.Name, e.Valid, e.Ready, e.Conflict, orDash(e.Message))
	}
	fmt.Fprintln(tw, "\nIMPORT\tTYPE\tIPS\tCLUSTERS")
	for _, i := range r.Imports {
		fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%s\n", i.Namespace, i.Name, i.Type, orDash(strings.Join(i.IPs, ",")), orDash(strings.Join(i.Clusters, ",")))
	}
	tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
