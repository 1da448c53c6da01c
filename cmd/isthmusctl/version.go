package main

import (
	"fmt"
	"io"
	"sort"
	"text/tabwriter"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-dev/isthmus/cmd/internal/buildinfo"
)

// versionReport is `isthmusctl version`: this client's build and the
// version each cluster's agent publishes in its broker record.
type versionReport struct {
	Client   clientVersion  `json:"client"`
	Agents   []agentVersion `json:"agents,omitempty"`
	Warnings []string       `json:"warnings,omitempty"`
}

type clientVersion struct {
	Version   string `json:"version"`
	Revision  string `json:"revision,omitempty"`
	Modified  bool   `json:"modified,omitempty"`
	GoVersion string `json:"goVersion,omitempty"`
}

type agentVersion struct {
	Cluster string `json:"cluster"`
	Version string `json:"version"`
}

// versionCommand is `isthmusctl version`.
func versionCommand(k *kubeFlags) *cobra.Command {
	var client bool
	var brokerKubeconfig, brokerContext string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "this client's version, every cluster's agent version from its broker record, and skew warnings",
		Long: `version prints the version this client was built from (Go's VCS stamp) and,
unless --client, the version every cluster's agent records in its Cluster
record on the broker, read through the current member's stored credential
(or --broker-context). A cluster running another version than this client,
or clusters running different versions, get a warning; the exit code stays
0, as skew within a release is supported while upgrading.`,
		Args: cobra.NoArgs,
	}
	output := outputFlag(cmd)
	f := cmd.Flags()
	f.BoolVar(&client, "client", false, "only this client's version; contact no cluster")
	f.StringVar(&brokerKubeconfig, "broker-kubeconfig", "", "kubeconfig of the broker (default: the credential isthmusctl join stored in the member)")
	f.StringVar(&brokerContext, "broker-context", "", "read the records on the hub through this context of --kubeconfig instead of a member's stored credential")
	_ = cmd.RegisterFlagCompletionFunc("broker-context", k.completeContexts)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := checkOutput(*output); err != nil {
			return err
		}
		bi := buildinfo.Read()
		rep := &versionReport{Client: clientVersion{Version: bi.Version, Revision: bi.Revision, Modified: bi.Modified, GoVersion: bi.GoVersion}}
		if !client {
			broker, ns, err := k.broker(cmd.Context(), brokerContext, brokerKubeconfig)
			if err != nil {
				return err
			}
			list, err := broker.API.BrokerV1alpha1().Clusters(ns).List(cmd.Context(), metav1.ListOptions{})
			if err != nil {
				return fmt.Errorf("listing the clusters on the broker: %w", err)
			}
			for _, c := range list.Items {
				rep.Agents = append(rep.Agents, agentVersion{Cluster: c.Spec.ClusterID, Version: c.Spec.Versions["agent"]})
			}
			sort.Slice(rep.Agents, func(i, j int) bool { return rep.Agents[i].Cluster < rep.Agents[j].Cluster })
			rep.Warnings = skew(rep.Client.Version, rep.Agents)
		}
		return render(cmd.OutOrStdout(), *output, rep, rep.table)
	}
	return cmd
}

// skew warns of every agent whose version is not the client's, of agents
// that record none, and of a clusterset running several versions.
func skew(client string, agents []agentVersion) []string {
	var warnings []string
	versions := map[string]bool{}
	for _, a := range agents {
		switch {
		case a.Version == "":
			warnings = append(warnings, fmt.Sprintf("cluster %s records no agent version (its agent predates version publishing, or has not started)", a.Cluster))
			continue
		case a.Version != client:
			warnings = append(warnings, fmt.Sprintf("cluster %s runs agent %s, this client is %s", a.Cluster, a.Version, client))
		}
		versions[a.Version] = true
	}
	if len(versions) > 1 {
		warnings = append(warnings, fmt.Sprintf("the clusterset runs %d agent versions: finish the upgrade so every member runs one", len(versions)))
	}
	return warnings
}

func (r *versionReport) table(w io.Writer, wide bool) {
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	c := r.Client
	if wide {
		fmt.Fprintf(tw, "client\t%s\trevision %s\tmodified %t\t%s\n", c.Version, orDash(c.Revision), c.Modified, c.GoVersion)
	} else {
		fmt.Fprintf(tw, "client\t%s\n", c.Version)
	}
	for _, a := range r.Agents {
		fmt.Fprintf(tw, "agent %s\t%s\n", a.Cluster, orDash(a.Version))
	}
	tw.Flush()
	for _, warn := range r.Warnings {
		fmt.Fprintln(w, "warning: "+warn)
	}
}
