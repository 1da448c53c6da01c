package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// setReport is `isthmusctl status --contexts a,b,c`: every member's view
// and where they disagree.
type setReport struct {
	Brokers  []string        `json:"brokers"`
	Views    []*statusReport `json:"views"`
	Services []serviceAcross `json:"services"`
	Problems []string        `json:"problems,omitempty"`
}

// serviceAcross is one exported service and what each member imports.
type serviceAcross struct {
	Namespace  string   `json:"namespace"`
	Name       string   `json:"name"`
	ExportedBy []string `json:"exportedBy"`
	// ImportedIn has, per view (in Views' order), the clusters that
	// member imports the service from; null when it has no import.
	ImportedIn [][]string `json:"importedIn"`
	// Agrees has, per view, whether its import matches the exporters.
	Agrees []bool `json:"agrees"`
}

// statusPoll is how often status --wait looks again.
const statusPoll = 2 * time.Second

func collectSet(ctx context.Context, k *kubeFlags, contexts []string, brokerKubeconfig string) (*setReport, error) {
	set := &setReport{}
	seen := map[string]bool{}
	for _, name := range contexts {
		v, err := collectView(ctx, k, name, brokerKubeconfig)
		if err != nil {
			return nil, err
		}
		set.Views = append(set.Views, v)
		if !slices.Contains(set.Brokers, v.Broker) {
			set.Brokers = append(set.Brokers, v.Broker)
		}
		for _, p := range v.Problems {
			if !seen[p] {
				seen[p] = true
				set.Problems = append(set.Problems, p)
			}
		}
	}
	if len(set.Brokers) > 1 {
		set.Problems = append(set.Problems, "the members use different brokers: "+strings.Join(set.Brokers, " and "))
	}
	byKey := map[string]int{}
	for _, v := range set.Views {
		for _, e := range v.Exported {
			if _, ok := byKey[e.key()]; !ok {
				byKey[e.key()] = len(set.Services)
				set.Services = append(set.Services, serviceAcross{Namespace: e.Namespace, Name: e.Name, ExportedBy: e.Clusters})
			}
		}
	}
	slices.SortFunc(set.Services, func(a, b serviceAcross) int { return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name) })
	for i := range set.Services {
		s := &set.Services[i]
		for _, v := range set.Views {
			withdrawn := map[string]bool{}
			for _, c := range v.Clusters {
				withdrawn[c.ID] = c.Health == "Withdrawn"
			}
			got, _, ok := v.importedFrom(exportedService{Namespace: s.Namespace, Name: s.Name, Clusters: s.ExportedBy}, withdrawn)
			s.ImportedIn, s.Agrees = append(s.ImportedIn, got), append(s.Agrees, ok)
		}
	}
	return set, nil
}

// waitHealthy looks until a look finds nothing wrong, saying on progress
// what it still waits for whenever that changes; at the timeout it
// returns the last look and a checksFailed.
func waitHealthy(ctx context.Context, look func(context.Context) (*setReport, error), timeout time.Duration, progress io.Writer) (*setReport, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last *setReport
	var lastErr error
	said := ""
	for {
		set, err := look(ctx)
		if err == nil && len(set.Problems) == 0 {
			fmt.Fprintf(progress, "healthy after %s\n", time.Since(start).Round(100*time.Millisecond))
			return set, nil
		}
		if set != nil {
			last = set
		}
		lastErr = err
		why := ""
		if err != nil {
			why = err.Error()
		} else {
			why = fmt.Sprintf("%d problem(s): %s", len(set.Problems), strings.Join(set.Problems, "; "))
		}
		if why != said {
			fmt.Fprintf(progress, "waiting (%s): %s\n", time.Since(start).Round(time.Second), why)
			said = why
		}
		select {
		case <-ctx.Done():
			msg := fmt.Sprintf("status --wait: not healthy after %s: %s", timeout, why)
			if lastErr != nil && last == nil {
				return nil, &checksFailed{msg}
			}
			return last, &checksFailed{msg}
		case <-time.After(statusPoll):
		}
	}
}

// table is one table of every member's view: the clusters with the
// context each is seen through, then each exported service with what each
// member imports, "!" marking where a member disagrees with the records.
func (s *setReport) table(w io.Writer, now time.Time, wide bool) {
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "broker %s, %d member view(s)\n\n", strings.Join(s.Brokers, " and "), len(s.Views))
	header := "CLUSTER\tCONTEXT\tREGION\tHEALTH\tLAST HEARTBEAT\tVERSION\tEXPORTS\tIMPORTS\tTUNNELS"
	if wide {
		header = "CLUSTER\tCONTEXT\tREGION\tZONE\tHEALTH\tREASON\tLAST HEARTBEAT\tVERSION\tPOD CIDRS\tEXPORTS\tIMPORTS\tTUNNELS"
	}
	fmt.Fprintln(tw, header)
	var clusters []clusterStatus
	for _, v := range s.Views {
		for _, c := range v.Clusters {
			if !slices.ContainsFunc(clusters, func(x clusterStatus) bool { return x.ID == c.ID }) {
				clusters = append(clusters, c)
			}
		}
	}
	slices.SortFunc(clusters, func(a, b clusterStatus) int { return strings.Compare(a.ID, b.ID) })
	for _, c := range clusters {
		context, exports, imports := "-", "-", "-"
		if i := slices.IndexFunc(s.Views, func(v *statusReport) bool { return v.Cluster == c.ID }); i >= 0 {
			v := s.Views[i]
			context, exports, imports = orDash(v.Context), strconv.Itoa(len(v.Exports)), strconv.Itoa(len(v.Imports))
		}
		health := c.Health
		if health != "Healthy" {
			health += " !"
		}
		var tunnels []string
		for _, t := range c.Tunnels {
			cell := t.Peer + ":" + t.State
			if wide && t.RTT > 0 {
				cell += "/" + t.RTT.String()
			}
			if t.State != "Connected" {
				cell += "!"
			}
			tunnels = append(tunnels, cell)
		}
		if wide {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.ID, context, orDash(c.Region), orDash(c.Zone), health, orDash(c.Reason),
				heartbeatAge(c.LastHeartbeat, now), orDash(c.Version), orDash(strings.Join(c.PodCIDRs, ",")), exports, imports, orDash(strings.Join(tunnels, " ")))
		} else {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.ID, context, orDash(c.Region), health,
				heartbeatAge(c.LastHeartbeat, now), orDash(c.Version), exports, imports, orDash(strings.Join(tunnels, " ")))
		}
	}
	header = "\nSERVICE\tEXPORTED BY"
	for _, v := range s.Views {
		header += "\tIMPORTED IN " + orDash(v.Cluster)
	}
	fmt.Fprintln(tw, header)
	for _, svc := range s.Services {
		row := svc.Namespace + "/" + svc.Name + "\t" + strings.Join(svc.ExportedBy, ",")
		for i, v := range s.Views {
			cell := "missing"
			switch {
			case svc.ImportedIn[i] != nil:
				cell = orDash(strings.Join(svc.ImportedIn[i], ","))
			case v.absent[svc.Namespace]:
				cell = "(no namespace)"
			}
			if !svc.Agrees[i] {
				cell += " !"
			}
			row += "\t" + cell
		}
		fmt.Fprintln(tw, row)
	}
	tw.Flush()
	printProblems(w, s.Problems)
}
