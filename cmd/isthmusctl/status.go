package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/isthmus-dev/isthmus/cmd/internal/kube"
	"github.com/isthmus-dev/isthmus/mcs/agent"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// statusReport is `isthmusctl status`: the clusterset as one member and
// the broker see it, and what is wrong with it.
type statusReport struct {
	Context  string          `json:"context,omitempty"`
	Cluster  string          `json:"cluster"`
	Broker   string          `json:"broker"`
	Clusters []clusterStatus `json:"clusters"`
	Exports  []exportStatus  `json:"exports"`
	Imports  []importStatus  `json:"imports"`
	// Exported is every service the broker holds records of, with the
	// clusters exporting it.
	Exported []exportedService `json:"exported"`
	// Problems say what keeps the clusterset from being healthy as this
	// member sees it; status exits 1 when there is any.
	Problems []string `json:"problems,omitempty"`

	// absent are the exported services' namespaces that do not exist
	// here: nothing is imported into them, by design.
	absent map[string]bool
}

type clusterStatus struct {
	ID            string       `json:"id"`
	Region        string       `json:"region,omitempty"`
	Zone          string       `json:"zone,omitempty"`
	Health        string       `json:"health"` // Healthy, Unhealthy, Withdrawn, Unknown
	Reason        string       `json:"reason,omitempty"`
	LastHeartbeat *time.Time   `json:"lastHeartbeat,omitempty"`
	Version       string       `json:"version,omitempty"` // the agent's, from its record
	PodCIDRs      []string     `json:"podCIDRs,omitempty"`
	Tunnels       []tunnelPeer `json:"tunnels,omitempty"`
}

type tunnelPeer struct {
	Peer     string        `json:"peer"`
	State    string        `json:"state"`
	RTT      time.Duration `json:"rttNanoseconds,omitempty"`
	Endpoint string        `json:"endpoint,omitempty"`
	Message  string        `json:"message,omitempty"`
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

type exportedService struct {
	Namespace string   `json:"namespace"`
	Name      string   `json:"name"`
	Clusters  []string `json:"clusters"`
}

func (e exportedService) key() string { return e.Namespace + "/" + e.Name }

// statusCommand is `isthmusctl status`: one member's view (the current
// context), or with --contexts every member's side by side; --wait
// repeats until the clusterset is healthy.
func statusCommand(k *kubeFlags) *cobra.Command {
	var brokerKubeconfig, contexts string
	var wait bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "status",
		Short: "clusters, health, heartbeats, versions, tunnels, exports and imports; exits 1 when something is wrong",
		Long: `status shows the clusterset as a member sees it: every cluster's health,
heartbeat, agent version and tunnels from the broker, this member's exports
and their conditions, and its imports against what the broker says is
exported. With --contexts it asks every member named and puts their views
in one table, marking with "!" where they disagree. -n limits the exports
and imports to one namespace.

It exits 1 when anything is wrong (a cluster not Healthy, a tunnel not
Connected, an export not Ready, a service not imported from every
exporting cluster); with --wait it looks again every 2 s until nothing is,
or exits 1 once --timeout has passed.`,
		Example: `  isthmusctl status --context east
  isthmusctl status --contexts east,west,north -o wide
  isthmusctl status --contexts east,west --wait --timeout 5m`,
		Args: cobra.NoArgs,
	}
	output := outputFlag(cmd)
	f := cmd.Flags()
	f.StringVar(&brokerKubeconfig, "broker-kubeconfig", "", "kubeconfig of the broker (default: the credential isthmusctl join stored in each member)")
	f.StringVar(&contexts, "contexts", "", "comma-separated kubeconfig contexts of members: one table of every member's view")
	f.BoolVar(&wait, "wait", false, "look again until every member is healthy and every export imported everywhere")
	f.DurationVar(&timeout, "timeout", 5*time.Minute, "how long --wait waits")
	_ = cmd.RegisterFlagCompletionFunc("contexts", k.completeContextList)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := checkOutput(*output); err != nil {
			return err
		}
		names := splitList(contexts)
		if len(names) == 0 {
			names = []string{""}
		}
		look := func(ctx context.Context) (*setReport, error) {
			return collectSet(ctx, k, names, brokerKubeconfig)
		}
		ctx := cmd.Context()
		var set *setReport
		var err error
		if wait {
			set, err = waitHealthy(ctx, look, timeout, cmd.ErrOrStderr())
		} else {
			set, err = look(ctx)
		}
		if set == nil {
			return err
		}
		stdout := cmd.OutOrStdout()
		if len(set.Views) == 1 && contexts == "" {
			rep := set.Views[0]
			if rerr := render(stdout, *output, rep, func(w io.Writer, wide bool) { rep.table(w, time.Now(), wide) }); rerr != nil {
				return rerr
			}
		} else if rerr := render(stdout, *output, set, func(w io.Writer, wide bool) { set.table(w, time.Now(), wide) }); rerr != nil {
			return rerr
		}
		if err != nil {
			return err
		}
		if n := len(set.Problems); n > 0 {
			return &checksFailed{fmt.Sprintf("status: %d problem(s): %s", n, strings.Join(set.Problems, "; "))}
		}
		return nil
	}
	return cmd
}

// collectView is one member's view: the member of context ("" for the
// current one), its broker through the stored credential.
func collectView(ctx context.Context, k *kubeFlags, context, brokerKubeconfig string) (*statusReport, error) {
	local, broker, ns, err := k.memberAndBroker(ctx, context, brokerKubeconfig)
	if err != nil {
		if context != "" {
			err = fmt.Errorf("context %s: %w", context, err)
		}
		return nil, err
	}
	only := *k.Namespace
	rep, err := collectStatus(ctx, local, broker, ns, only)
	if err != nil {
		if context != "" {
			err = fmt.Errorf("context %s: %w", context, err)
		}
		return nil, err
	}
	rep.Context = context
	rep.Broker = broker.Config.Host + " (namespace " + ns + ")"
	rep.Problems = rep.check()
	return rep, nil
}

// collectStatus reads the records and this member's exports and imports;
// only, when set, limits exports and imports to one namespace.
func collectStatus(ctx context.Context, local *kube.Clients, broker *brokerClients, ns, only string) (*statusReport, error) {
	rep := &statusReport{absent: map[string]bool{}}
	if id, err := agent.ClusterID(ctx, local.Dynamic, ""); err == nil {
		rep.Cluster = id
	}
	list, err := broker.API.BrokerV1alpha1().Clusters(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing the clusters on the broker: %w", err)
	}
	for _, c := range list.Items {
		row := clusterStatus{ID: c.Spec.ClusterID, Region: c.Spec.Region, Zone: c.Spec.Zone, Health: "Unknown",
			Version: c.Spec.Versions["agent"], PodCIDRs: c.Spec.PodCIDRs}
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
				row.Tunnels = append(row.Tunnels, tunnelPeer{Peer: p.Cluster, State: string(p.State),
					RTT: time.Duration(p.RTTMicros) * time.Microsecond, Endpoint: p.Endpoint, Message: p.Message})
			}
		}
		rep.Clusters = append(rep.Clusters, row)
	}
	sort.Slice(rep.Clusters, func(i, j int) bool { return rep.Clusters[i].ID < rep.Clusters[j].ID })

	records, err := broker.API.BrokerV1alpha1().ExportedServices(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing the exported services on the broker: %w", err)
	}
	byKey := map[string]*exportedService{}
	for _, es := range records.Items {
		if only != "" && es.Spec.ServiceNamespace != only {
			continue
		}
		e := exportedService{Namespace: es.Spec.ServiceNamespace, Name: es.Spec.ServiceName}
		if byKey[e.key()] == nil {
			byKey[e.key()] = &e
		}
		byKey[e.key()].Clusters = append(byKey[e.key()].Clusters, es.Spec.SourceCluster)
	}
	for _, e := range byKey {
		slices.Sort(e.Clusters)
		rep.Exported = append(rep.Exported, *e)
		if _, err := local.Kube.CoreV1().Namespaces().Get(ctx, e.Namespace, metav1.GetOptions{}); apierrors.IsNotFound(err) {
			rep.absent[e.Namespace] = true
		}
	}
	sort.Slice(rep.Exported, func(i, j int) bool { return rep.Exported[i].key() < rep.Exported[j].key() })

	exports, err := local.MCS.MulticlusterV1beta1().ServiceExports(only).List(ctx, metav1.ListOptions{})
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
	imports, err := local.MCS.MulticlusterV1beta1().ServiceImports(only).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing ServiceImports: %w", err)
	}
	for _, si := range imports.Items {
		row := importStatus{Namespace: si.Namespace, Name: si.Name, Type: string(si.Spec.Type), IPs: si.Spec.IPs}
		for _, c := range si.Status.Clusters {
			row.Clusters = append(row.Clusters, c.Cluster)
		}
		slices.Sort(row.Clusters)
		rep.Imports = append(rep.Imports, row)
	}
	return rep, nil
}

// check lists what keeps the clusterset unhealthy in this view.
func (r *statusReport) check() []string {
	var problems []string
	withdrawn := map[string]bool{}
	for _, c := range r.Clusters {
		if c.Health != "Healthy" {
			problems = append(problems, fmt.Sprintf("cluster %s is %s%s", c.ID, c.Health, parenthesised(c.Reason)))
		}
		if c.Health == "Withdrawn" {
			withdrawn[c.ID] = true
		}
		for _, t := range c.Tunnels {
			if t.State != string(brokerv1.TunnelPeerConnected) {
				problems = append(problems, fmt.Sprintf("tunnel %s→%s is %s%s", c.ID, t.Peer, t.State, parenthesised(t.Message)))
			}
		}
	}
	for _, e := range r.Exports {
		if e.Valid != "True" || e.Ready != "True" || e.Conflict == "True" {
			problems = append(problems, fmt.Sprintf("export %s/%s in %s: Valid=%s Ready=%s Conflict=%s%s", e.Namespace, e.Name, orDash(r.Cluster), e.Valid, e.Ready, e.Conflict, parenthesised(e.Message)))
		}
	}
	for _, e := range r.Exported {
		if got, want, ok := r.importedFrom(e, withdrawn); !ok {
			if got == nil {
				problems = append(problems, fmt.Sprintf("%s, exported by %s, is not imported in %s", e.key(), strings.Join(want, ","), orDash(r.Cluster)))
			} else {
				problems = append(problems, fmt.Sprintf("%s is imported in %s from %s, exported by %s", e.key(), orDash(r.Cluster), orDash(strings.Join(got, ",")), strings.Join(want, ",")))
			}
		}
	}
	return problems
}

// importedFrom says which clusters this member imports e from, which it
// should (the exporters not withdrawn), and whether they agree. A service
// whose namespace does not exist here needs no import.
func (r *statusReport) importedFrom(e exportedService, withdrawn map[string]bool) (got, want []string, ok bool) {
	for _, c := range e.Clusters {
		if !withdrawn[c] {
			want = append(want, c)
		}
	}
	i := slices.IndexFunc(r.Imports, func(i importStatus) bool { return i.Namespace == e.Namespace && i.Name == e.Name })
	if i < 0 {
		return nil, want, r.absent[e.Namespace] || len(want) == 0
	}
	got = r.Imports[i].Clusters
	if got == nil {
		got = []string{}
	}
	return got, want, slices.Equal(got, want)
}

func (r *statusReport) table(w io.Writer, now time.Time, wide bool) {
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "cluster %s, broker %s\n\n", orDash(r.Cluster), r.Broker)
	header := "CLUSTER\tREGION\tHEALTH\tLAST HEARTBEAT\tVERSION\tTUNNELS"
	if wide {
		header = "CLUSTER\tREGION\tZONE\tHEALTH\tREASON\tLAST HEARTBEAT\tVERSION\tPOD CIDRS\tTUNNELS"
	}
	fmt.Fprintln(tw, header)
	for _, c := range r.Clusters {
		var tunnels []string
		for _, t := range c.Tunnels {
			s := t.Peer + ":" + t.State
			if wide && t.RTT > 0 {
				s += "/" + t.RTT.String()
			}
			tunnels = append(tunnels, s)
		}
		if wide {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.ID, orDash(c.Region), orDash(c.Zone), c.Health, orDash(c.Reason), heartbeatAge(c.LastHeartbeat, now),
				orDash(c.Version), orDash(strings.Join(c.PodCIDRs, ",")), orDash(strings.Join(tunnels, " ")))
		} else {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", c.ID, orDash(c.Region), c.Health, heartbeatAge(c.LastHeartbeat, now), orDash(c.Version), orDash(strings.Join(tunnels, " ")))
		}
	}
	fmt.Fprintln(tw, "\nEXPORT\tVALID\tREADY\tCONFLICT\tMESSAGE")
	for _, e := range r.Exports {
		fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%s\t%s\n", e.Namespace, e.Name, e.Valid, e.Ready, e.Conflict, orDash(e.Message))
	}
	fmt.Fprintln(tw, "\nIMPORT\tTYPE\tIPS\tCLUSTERS\tEXPORTED BY")
	for _, i := range r.Imports {
		by := "-"
		if j := slices.IndexFunc(r.Exported, func(e exportedService) bool { return e.Namespace == i.Namespace && e.Name == i.Name }); j >= 0 {
			by = strings.Join(r.Exported[j].Clusters, ",")
		}
		fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%s\t%s\n", i.Namespace, i.Name, i.Type, orDash(strings.Join(i.IPs, ",")), orDash(strings.Join(i.Clusters, ",")), by)
	}
	tw.Flush()
	printProblems(w, r.Problems)
}

func printProblems(w io.Writer, problems []string) {
	if len(problems) == 0 {
		fmt.Fprintln(w, "\nno problems found")
		return
	}
	fmt.Fprintln(w, "\nproblems:")
	for _, p := range problems {
		fmt.Fprintln(w, "- "+p)
	}
}

func heartbeatAge(t *time.Time, now time.Time) string {
	if t == nil {
		return "never"
	}
	return now.Sub(*t).Round(time.Second).String() + " ago"
}

func parenthesised(s string) string {
	if s == "" {
		return ""
	}
	return " (" + s + ")"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
