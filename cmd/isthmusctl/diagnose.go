package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/isthmus-dev/isthmus/cmd/internal/kube"
	"github.com/isthmus-dev/isthmus/mcs/agent"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/tunnel"
)

// finding is one check of `isthmusctl diagnose`.
type finding struct {
	Check  string `json:"check"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
	Advice string `json:"advice,omitempty"`
}

// diagnoseCommand is `isthmusctl diagnose <svc>.<ns>` (or `<svc> -n
// ns`): it walks one service from the current cluster, from its export to
// the tunnels that carry it, says in plain words what is wrong and what to
// do, and exits 1 when a check fails.
func diagnoseCommand(k *kubeFlags) *cobra.Command {
	var brokerKubeconfig, dnsServer, dnsService, xdsServer string
	cmd := &cobra.Command{
		Use:   "diagnose SERVICE.NAMESPACE",
		Short: "walk one service end to end and say what is wrong; exits 1 when a check fails",
		Long: `diagnose walks one service from the current cluster: its export here, the
broker's records, the import, its endpoints, an answer from this cluster's
clusterset.local resolver, the tunnels to every exporting cluster, and what
this cluster's xDS server gives a proxyless gRPC client.

The resolver is asked with a DNS client (UDP, then TCP when the answer is
truncated or UDP fails): at --dns-server when given, else through a
port-forward (TCP) to a ready pod of the Service --dns-service, as kubectl
port-forward would.

The xDS server is asked over TLS, verified against the clusterset's roots
(ConfigMap isthmus-system/isthmus-trust-bundle, or --xds-ca-file) with
the name --xds-server-name, sending a token of --xds-service-account
minted with TokenRequest for audience isthmus-xds, as the chart's xDS
server expects; --xds-plaintext for one listening on loopback.`,
		Example: `  isthmusctl diagnose echo.demo --context east
  isthmusctl diagnose echo -n demo --dns-server 10.96.0.53:53 -o json
  kubectl -n isthmus-system port-forward svc/isthmus-xds 15010 &
  isthmusctl diagnose echo.demo --xds-server localhost:15010`,
		Args: exactName("isthmusctl diagnose <service>.<namespace> (or <service> -n <namespace>) [flags]"),
	}
	output := outputFlag(cmd)
	f := cmd.Flags()
	f.StringVar(&brokerKubeconfig, "broker-kubeconfig", "", "kubeconfig of the broker (default: the credential isthmusctl join stored)")
	f.StringVar(&dnsServer, "dns-server", "", "host:port of this cluster's clusterset.local resolver (default: a port-forward to --dns-service)")
	f.StringVar(&dnsService, "dns-service", brokerv1.MemberNamespace+"/isthmus-dns", "NAMESPACE/NAME of the resolver's Service, reached by port-forward when --dns-server is empty (empty: skip the DNS check)")
	f.StringVar(&xdsServer, "xds-server", "", "host:port of this cluster's xDS server (isthmus xds), asked as a proxyless gRPC client would (empty: the xDS check is skipped)")
	var xdsConn xdsConnFlags
	xdsConn.register(f)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		name, ns, err := serviceAndNamespace(k, args[0])
		if err != nil {
			return err
		}
		if err := checkOutput(*output); err != nil {
			return err
		}
		ctx := cmd.Context()
		local, broker, brokerNS, err := k.memberAndBroker(ctx, "", brokerKubeconfig)
		if err != nil {
			return err
		}
		d := &diagnosis{name: name, ns: ns, local: local, broker: broker, brokerNS: brokerNS, dnsServer: dnsServer, dnsService: dnsService, xdsServer: xdsServer, xdsConn: xdsConn}
		if d.id, err = agent.ClusterID(ctx, local.Dynamic, ""); err != nil {
			return fmt.Errorf("this cluster has no cluster id (is it joined?): %w", err)
		}
		d.run(ctx)
		if err := render(cmd.OutOrStdout(), *output, d.findings, d.table); err != nil {
			return err
		}
		var failed []string
		for _, f := range d.findings {
			if !f.OK {
				failed = append(failed, f.Check)
			}
		}
		if len(failed) > 0 {
			return &checksFailed{fmt.Sprintf("diagnose %s.%s: %d check(s) failed: %s", name, ns, len(failed), strings.Join(failed, ", "))}
		}
		return nil
	}
	return cmd
}

// serviceAndNamespace reads <svc>.<ns>, or <svc> with -n (else the
// context's namespace).
func serviceAndNamespace(k *kubeFlags, arg string) (name, ns string, err error) {
	name, ns, dotted := strings.Cut(arg, ".")
	switch {
	case name == "" || strings.Contains(ns, "."):
		return "", "", fmt.Errorf("usage: isthmusctl diagnose <service>.<namespace> (or <service> -n <namespace>)")
	case dotted && *k.Namespace != "" && *k.Namespace != ns:
		return "", "", fmt.Errorf("%s names namespace %s, -n says %s", arg, ns, *k.Namespace)
	case dotted:
		return name, ns, nil
	}
	ns, err = k.namespace("")
	return name, ns, err
}

type diagnosis struct {
	name, ns, id, brokerNS           string
	dnsServer, dnsService, xdsServer string
	xdsConn                          xdsConnFlags
	local                            *kube.Clients
	broker                           *brokerClients
	findings                         []finding
	exporters                        []string
	ip                               string
	ports                            []mcsv1beta1.ServicePort
	egress                           string // the gateway egress ports annotation, in gateway mode
}

func (d *diagnosis) add(check string, ok bool, detail, advice string) {
	if ok {
		advice = ""
	}
	d.findings = append(d.findings, finding{Check: check, OK: ok, Detail: detail, Advice: advice})
}

func (d *diagnosis) run(ctx context.Context) {
	d.export(ctx)
	d.records(ctx)
	if !d.imported(ctx) {
		return
	}
	d.slices(ctx)
	d.dns(ctx)
	d.tunnels(ctx)
	d.xds(ctx)
}

func (d *diagnosis) export(ctx context.Context) {
	se, err := d.local.MCS.MulticlusterV1beta1().ServiceExports(d.ns).Get(ctx, d.name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		d.add("export here", true, "not exported from this cluster ("+d.id+"); it can still be imported from others", "")
		return
	case err != nil:
		d.add("export here", false, err.Error(), "check that this cluster's apiserver is reachable and the MCS CRDs are installed (isthmusctl join)")
		return
	}
	for _, c := range se.Status.Conditions {
		bad := (c.Type == string(mcsv1beta1.ServiceExportConditionConflict)) == (c.Status == metav1.ConditionTrue)
		if c.Type == string(mcsv1beta1.ServiceExportConditionValid) && bad {
			d.add("export here", false, "Valid="+string(c.Status)+" ("+c.Reason+"): "+c.Message, "create the Service "+d.ns+"/"+d.name+" with a supported type, or delete the export")
			return
		}
		if c.Type == string(mcsv1beta1.ServiceExportConditionConflict) && bad {
			d.add("export here", false, "Conflict: "+c.Message, "align the Service with the winning cluster's, named in the message; the ports are merged meanwhile")
			return
		}
	}
	if len(se.Status.Conditions) == 0 {
		d.add("export here", false, "the ServiceExport has no conditions", "is `isthmus agent` running in "+d.id+"? its /readyz says why not")
		return
	}
	d.add("export here", true, "exported from "+d.id+": Valid, no conflict", "")
}

func (d *diagnosis) records(ctx context.Context) {
	list, err := d.broker.API.BrokerV1alpha1().ExportedServices(d.brokerNS).List(ctx,
		metav1.ListOptions{LabelSelector: labels.Set{brokerv1.LabelServiceName: d.name, brokerv1.LabelServiceNamespace: d.ns}.String()})
	if err != nil {
		d.add("broker records", false, err.Error(), "check the broker credential (isthmusctl join renews it) and the broker's reachability")
		return
	}
	for _, es := range list.Items {
		d.exporters = append(d.exporters, es.Spec.SourceCluster)
	}
	slices.Sort(d.exporters)
	if len(d.exporters) == 0 {
		d.add("broker records", false, "no cluster exports "+d.ns+"/"+d.name, "create a ServiceExport next to the Service in the cluster(s) that run it: isthmusctl export "+d.name+" -n "+d.ns)
		return
	}
	d.add("broker records", true, "exported by "+strings.Join(d.exporters, ", "), "")
}

func (d *diagnosis) imported(ctx context.Context) bool {
	si, err := d.local.MCS.MulticlusterV1beta1().ServiceImports(d.ns).Get(ctx, d.name, metav1.GetOptions{})
	if err != nil {
		advice := "is `isthmus agent` running here and connected to the broker (isthmusctl status)?"
		if _, nsErr := d.local.Kube.CoreV1().Namespaces().Get(ctx, d.ns, metav1.GetOptions{}); apierrors.IsNotFound(nsErr) {
			advice = "create the namespace " + d.ns + " here: services are imported only into namespaces that exist (namespace sameness)"
		}
		d.add("import", false, "no ServiceImport "+d.ns+"/"+d.name+" in "+d.id, advice)
		return false
	}
	var from []string
	for _, c := range si.Status.Clusters {
		from = append(from, c.Cluster)
	}
	if len(si.Spec.IPs) > 0 {
		d.ip = si.Spec.IPs[0]
	}
	d.ports = si.Spec.Ports
	d.egress = si.Annotations[brokerv1.AnnotationEgressPorts]
	ok := si.Spec.Type == mcsv1beta1.Headless || d.ip != ""
	d.add("import", ok, fmt.Sprintf("%s, ips %v, from %v", si.Spec.Type, si.Spec.IPs, from), "the ClusterSetIP is not allocated yet: the agent's log says why the derived Service failed")
	return true
}

func (d *diagnosis) slices(ctx context.Context) {
	list, err := d.local.Kube.DiscoveryV1().EndpointSlices(d.ns).List(ctx, metav1.ListOptions{
		LabelSelector: labels.Set{mcsv1beta1.LabelServiceName: d.name}.String()})
	if err != nil {
		d.add("endpoints", false, err.Error(), "")
		return
	}
	ready := readyBySource(list.Items)
	var parts []string
	total := 0
	for _, c := range d.exporters {
		parts = append(parts, fmt.Sprintf("%s: %d ready", c, ready[c]))
		total += ready[c]
	}
	d.add("endpoints", total > 0, strings.Join(parts, ", "), "no ready endpoint in any cluster: check the Deployments behind the exported Services")
}

// readyBySource counts the ready addresses of an import's MCS
// EndpointSlices by the cluster they came from.
func readyBySource(list []discoveryv1.EndpointSlice) map[string]int {
	ready := map[string]int{}
	for _, s := range list {
		src := s.Labels[mcsv1beta1.LabelSourceCluster]
		for _, e := range s.Endpoints {
			if e.Conditions.Ready == nil || *e.Conditions.Ready {
				ready[src] += len(e.Addresses)
			}
		}
	}
	return ready
}

func (d *diagnosis) tunnels(ctx context.Context) {
	c, err := d.broker.API.BrokerV1alpha1().Clusters(d.brokerNS).Get(ctx, d.id, metav1.GetOptions{})
	if err != nil {
		d.add("tunnels", false, "no Cluster record for "+d.id+": "+err.Error(), "is `isthmus agent` running here?")
		return
	}
	for _, peer := range d.exporters {
		if peer == d.id {
			continue
		}
		check := "tunnel to " + peer
		if why := d.peerSilent(ctx, peer); why != "" {
			d.add(check, false, peer+" is silent: "+why, "bring "+peer+"'s agent and gateway back (isthmusctl status shows its last heartbeat); meanwhile the other exporting clusters serve")
			continue
		}
		if c.Status.Tunnel == nil {
			ok := slices.ContainsFunc(c.Status.Conditions, func(x metav1.Condition) bool {
				return x.Type == tunnel.ConditionPeersConnected && x.Status == metav1.ConditionTrue
			})
			d.add(check, ok, "no per-peer tunnel status; "+tunnel.ConditionPeersConnected+"="+fmt.Sprint(ok), "is `isthmus tunnel` running on this cluster's gateway node? its record conditions name the peers that are down")
			continue
		}
		i := slices.IndexFunc(c.Status.Tunnel.Peers, func(p brokerv1.TunnelPeerStatus) bool { return p.Cluster == peer })
		if i < 0 {
			d.add(check, false, "not peered", "the peer's record has no WireGuard key or endpoint yet, or it conflicts: see TunnelConflict on "+d.id+"'s record")
			continue
		}
		p := c.Status.Tunnel.Peers[i]
		detail := string(p.State)
		if p.RTTMicros > 0 {
			detail += fmt.Sprintf(", RTT %s", time.Duration(p.RTTMicros)*time.Microsecond)
		}
		if p.Message != "" {
			detail += ": " + p.Message
		}
		d.add(check, p.State == brokerv1.TunnelPeerConnected, detail, "check that UDP reaches "+p.Endpoint+" from this gateway and that "+peer+"'s tunnel runs (isthmusctl status)")
	}
}

// peerSilent says why a peer's heartbeat lapsed, or "" while it is healthy.
func (d *diagnosis) peerSilent(ctx context.Context, peer string) string {
	c, err := d.broker.API.BrokerV1alpha1().Clusters(d.brokerNS).Get(ctx, peer, metav1.GetOptions{})
	if err != nil {
		return ""
	}
	for _, x := range c.Status.Conditions {
		if x.Type == brokerv1.ClusterConditionHeartbeat && x.Status == metav1.ConditionFalse {
			return x.Reason + ": " + x.Message
		}
	}
	return ""
}

func (d *diagnosis) table(w io.Writer, wide bool) {
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "%s.%s seen from cluster %s\n\n", d.name, d.ns, d.id)
	if wide {
		fmt.Fprintln(tw, "CHECK\tOK\tDETAIL\tADVICE")
	} else {
		fmt.Fprintln(tw, "CHECK\tOK\tDETAIL")
	}
	bad := 0
	for _, f := range d.findings {
		mark := "yes"
		if !f.OK {
			mark, bad = "NO", bad+1
		}
		if wide {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", f.Check, mark, f.Detail, orDash(f.Advice))
		} else {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", f.Check, mark, f.Detail)
		}
	}
	tw.Flush()
	if bad == 0 {
		fmt.Fprintln(w, "\nnothing wrong found")
		return
	}
	fmt.Fprintln(w, "\nwhat to do:")
	for _, f := range d.findings {
		if !f.OK && f.Advice != "" {
			fmt.Fprintf(w, "- %s: %s\n", f.Check, f.Advice)
		}
	}
}
