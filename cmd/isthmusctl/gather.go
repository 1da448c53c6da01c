package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	"sigs.k8s.io/yaml"

	"github.com/isthmus-dev/isthmus/cmd/internal/buildinfo"
	"github.com/isthmus-dev/isthmus/cmd/internal/kube"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// all lists everything of a kind.
var all = metav1.ListOptions{}

// gatherTimeout bounds each HTTP fetch of a role's /readyz or /metrics.
const gatherTimeout = 5 * time.Second

// bundle is a support bundle being assembled: every file passes redact.
type bundle struct {
	files  map[string][]byte
	errors []string
}

func (b *bundle) add(path string, data []byte) { b.files[path] = redact(data) }

func (b *bundle) addYAML(path string, v any) {
	data, err := yaml.Marshal(v)
	if err != nil {
		b.fail(path, err)
		return
	}
	b.add(path, data)
}

// list takes a List call's results: b.list(path)(client.List(ctx, opts))
// adds the list without managed fields and last-applied annotations, or
// notes the error.
func (b *bundle) list(path string) func(runtime.Object, error) {
	return func(list runtime.Object, err error) {
		if err != nil {
			b.fail(path, err)
			return
		}
		_ = meta.EachListItem(list, func(o runtime.Object) error {
			if m, err := meta.Accessor(o); err == nil {
				m.SetManagedFields(nil)
				delete(m.GetAnnotations(), corev1.LastAppliedConfigAnnotation)
			}
			return nil
		})
		b.addYAML(path, list)
	}
}

func (b *bundle) fail(what string, err error) {
	b.errors = append(b.errors, what+": "+err.Error())
}

// gatherCommand is `isthmusctl gather`: a support bundle of the broker's
// records and each member's objects, Events, logs and role endpoints,
// with credentials redacted.
func gatherCommand(k *kubeFlags) *cobra.Command {
	var contexts, brokerContext, brokerKubeconfig, to string
	var endpoints []string
	var tail int64
	cmd := &cobra.Command{
		Use:   "gather",
		Short: "write a support bundle (records, conditions, Events, logs, role endpoints), credentials redacted",
		Long: `gather writes what a person debugging the clusterset needs, from every
member named by --contexts (default: the current context) and the broker:

  broker/        Cluster records (conditions, versions, tunnel status),
                 ExportedServices, heartbeat Leases, the tunnels' peer
                 table; with --broker-context (the hub's admin) also the
                 MemberPolicies and the broker namespace's Events
  <context>/     status as that member sees it, ServiceExports,
                 ServiceImports, MCS EndpointSlices, Events of exports and
                 imports and in isthmus-system, the pods, Services and
                 workloads of isthmus-system, the names and keys (never
                 the values) of its Secrets, each Isthmus pod's logs and
                 each role's /readyz and /metrics through the apiserver
  endpoints/     /readyz and /metrics of every --endpoint
  errors.txt     what could not be collected, and why

Secrets are never read for their values, and every file is passed
through a filter that removes private keys, tokens and kubeconfig
credentials. --to ending in .tar.gz writes a tarball, else a directory.`,
		Example: `  isthmusctl gather --contexts east,west --broker-context hub --to bundle.tar.gz
  isthmusctl gather --endpoint http://127.0.0.1:9470 --to ./bundle`,
		Args: cobra.NoArgs,
	}
	f := cmd.Flags()
	f.StringVar(&contexts, "contexts", "", "comma-separated kubeconfig contexts of members (default: the current context)")
	f.StringVar(&brokerContext, "broker-context", "", "context of the hub, read as its admin (default: the first member's stored broker credential)")
	f.StringVar(&brokerKubeconfig, "broker-kubeconfig", "", "kubeconfig of the broker, instead of the members' stored credential")
	f.StringVar(&to, "to", "", "where to write: a directory, or a file ending in .tar.gz (default: isthmus-gather-<time>.tar.gz)")
	f.StringArrayVar(&endpoints, "endpoint", nil, "base URL of a role's metrics address reachable from here (e.g. http://127.0.0.1:9470); repeatable")
	f.Int64Var(&tail, "tail", 2000, "log lines per container")
	_ = cmd.RegisterFlagCompletionFunc("contexts", k.completeContextList)
	_ = cmd.RegisterFlagCompletionFunc("broker-context", k.completeContexts)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		ctx := cmd.Context()
		now := time.Now().UTC()
		if to == "" {
			to = "isthmus-gather-" + now.Format("20060102T150405Z") + ".tar.gz"
		}
		names := splitList(contexts)
		if len(names) == 0 {
			current := *k.Context
			if current == "" {
				raw, err := k.ToRawKubeConfigLoader().RawConfig()
				if err != nil {
					return err
				}
				current = raw.CurrentContext
			}
			names = []string{current}
		}
		b := &bundle{files: map[string][]byte{}}
		g := &gatherer{k: k, b: b, tail: tail}
		g.broker(ctx, brokerContext, brokerKubeconfig, names[0])
		for _, name := range names {
			g.member(ctx, name, brokerKubeconfig)
		}
		for _, e := range endpoints {
			g.endpoint(ctx, e)
		}
		bi := buildinfo.Read()
		b.add("README.txt", []byte(fmt.Sprintf("isthmusctl gather, %s\nclient %s (revision %s)\ncontexts: %s\nbroker read as: %s\n\n"+
			"Secret values are never read; private keys, tokens and kubeconfig credentials are redacted from every file.\n"+
			"errors.txt lists what could not be collected.\n", now.Format(time.RFC3339), bi.Version, orDash(bi.Revision),
			strings.Join(names, ", "), orDash(brokerContext))))
		b.add("errors.txt", []byte(strings.Join(b.errors, "\n")+"\n"))
		if err := b.write(to); err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "wrote %s: %d files from %d member(s) and the broker, %d item(s) not collected (errors.txt)\n", to, len(b.files), len(names), len(b.errors))
		return nil
	}
	return cmd
}

type gatherer struct {
	k    *kubeFlags
	b    *bundle
	tail int64
}

// broker collects the broker's records, as the hub's admin or through
// the first member's stored credential.
func (g *gatherer) broker(ctx context.Context, brokerContext, brokerKubeconfig, firstMember string) {
	var broker *brokerClients
	var ns string
	var err error
	if brokerContext != "" {
		broker, ns, err = g.k.broker(ctx, brokerContext, brokerKubeconfig)
	} else {
		_, broker, ns, err = g.k.memberAndBroker(ctx, firstMember, brokerKubeconfig)
	}
	if err != nil {
		g.b.fail("broker", err)
		return
	}
	api := broker.API.BrokerV1alpha1()
	if list, err := api.Clusters(ns).List(ctx, all); err != nil {
		g.b.fail("broker/clusters.yaml", err)
	} else {
		for i := range list.Items {
			scrubMeta(&list.Items[i].ObjectMeta)
		}
		g.b.addYAML("broker/clusters.yaml", list)
		g.b.add("broker/tunnel-peers.txt", peerTable(list.Items))
	}
	g.b.list("broker/exportedservices.yaml")(api.ExportedServices(ns).List(ctx, all))
	g.b.list("broker/leases.yaml")(broker.Kube.CoordinationV1().Leases(ns).List(ctx, all))
	if brokerContext == "" {
		return
	}
	g.b.list("broker/memberpolicies.yaml")(api.MemberPolicies(ns).List(ctx, all))
	g.events(ctx, broker.Clients, "broker/events.txt", ns, "")
	g.secretNames(ctx, broker.Clients, "broker/secrets.txt", ns)
}

// peerTable is the tunnels' peer table as every record publishes it.
func peerTable(clusters []brokerv1.Cluster) []byte {
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "FROM\tTO\tSTATE\tRTT\tENDPOINT\tLAST HANDSHAKE\tMESSAGE")
	for _, c := range clusters {
		if c.Status.Tunnel == nil {
			fmt.Fprintf(tw, "%s\t-\tno tunnel status\t\t\t\t\n", c.Spec.ClusterID)
			continue
		}
		for _, p := range c.Status.Tunnel.Peers {
			hs := "-"
			if p.LastHandshakeTime != nil {
				hs = p.LastHandshakeTime.UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.Spec.ClusterID, p.Cluster, p.State, time.Duration(p.RTTMicros)*time.Microsecond, orDash(p.Endpoint), hs, orDash(p.Message))
		}
	}
	tw.Flush()
	return buf.Bytes()
}

// member collects one member's view, objects, Events, logs and roles.
func (g *gatherer) member(ctx context.Context, name, brokerKubeconfig string) {
	dir := safeName(name)
	c, err := g.k.clients(name)
	if err != nil {
		g.b.fail(dir, err)
		return
	}
	if v, err := collectView(ctx, g.k, name, brokerKubeconfig); err != nil {
		g.b.fail(dir+"/status.json", err)
	} else if data, err := json.MarshalIndent(v, "", "  "); err == nil {
		g.b.add(dir+"/status.json", data)
		var buf bytes.Buffer
		v.table(&buf, time.Now(), true)
		g.b.add(dir+"/status.txt", buf.Bytes())
	}
	mcs := c.MCS.MulticlusterV1beta1()
	g.b.list(dir + "/serviceexports.yaml")(mcs.ServiceExports("").List(ctx, all))
	g.b.list(dir + "/serviceimports.yaml")(mcs.ServiceImports("").List(ctx, all))
	g.b.list(dir + "/endpointslices.yaml")(c.Kube.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{LabelSelector: mcsv1beta1.LabelServiceName}))
	ns := brokerv1.MemberNamespace
	g.events(ctx, c, dir+"/events-"+ns+".txt", ns, "")
	g.events(ctx, c, dir+"/events-serviceexports.txt", "", "ServiceExport")
	g.events(ctx, c, dir+"/events-serviceimports.txt", "", "ServiceImport")
	g.secretNames(ctx, c, dir+"/secrets-"+ns+".txt", ns)
	g.b.list(dir + "/services.yaml")(c.Kube.CoreV1().Services(ns).List(ctx, all))
	if list, err := c.Kube.AppsV1().Deployments(ns).List(ctx, all); err == nil {
		for i := range list.Items {
			scrubMeta(&list.Items[i].ObjectMeta)
			list.Items[i].Spec.Template = corev1.PodTemplateSpec{} // the pods below show it, scrubbed
		}
		g.b.addYAML(dir+"/deployments.yaml", list)
	}
	pods, err := c.Kube.CoreV1().Pods(ns).List(ctx, all)
	if err != nil {
		g.b.fail(dir+"/pods.yaml", err)
		return
	}
	for i := range pods.Items {
		scrubPod(&pods.Items[i])
	}
	g.b.addYAML(dir+"/pods.yaml", pods)
	for _, p := range pods.Items {
		g.podLogs(ctx, c, dir, p)
		g.podEndpoints(ctx, c, dir, p)
	}
}

func (g *gatherer) events(ctx context.Context, c *kube.Clients, path, ns, kind string) {
	opts := metav1.ListOptions{}
	if kind != "" {
		opts.FieldSelector = "involvedObject.kind=" + kind
	}
	list, err := c.Kube.CoreV1().Events(ns).List(ctx, opts)
	if err != nil {
		g.b.fail(path, err)
		return
	}
	sort.Slice(list.Items, func(i, j int) bool { return list.Items[i].LastTimestamp.Before(&list.Items[j].LastTimestamp) })
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "LAST SEEN\tTYPE\tREASON\tOBJECT\tCOUNT\tMESSAGE")
	for _, e := range list.Items {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s/%s/%s\t%d\t%s\n", e.LastTimestamp.UTC().Format(time.RFC3339), e.Type, e.Reason,
			e.InvolvedObject.Kind, e.InvolvedObject.Namespace, e.InvolvedObject.Name, e.Count, strings.ReplaceAll(e.Message, "\n", " "))
	}
	tw.Flush()
	g.b.add(path, buf.Bytes())
}

// secretNames lists Secrets by name, type and keys with their sizes; the
// values are dropped as soon as they arrive.
func (g *gatherer) secretNames(ctx context.Context, c *kube.Clients, path, ns string) {
	list, err := c.Kube.CoreV1().Secrets(ns).List(ctx, all)
	if err != nil {
		g.b.fail(path, err)
		return
	}
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "SECRET\tTYPE\tKEYS (bytes)")
	for _, s := range list.Items {
		var keys []string
		for k, v := range s.Data {
			keys = append(keys, fmt.Sprintf("%s (%d)", k, len(v)))
		}
		sort.Strings(keys)
		fmt.Fprintf(tw, "%s\t%s\t%s\n", s.Name, s.Type, strings.Join(keys, ", "))
	}
	tw.Flush()
	g.b.add(path, buf.Bytes())
}

func (g *gatherer) podLogs(ctx context.Context, c *kube.Clients, dir string, p corev1.Pod) {
	for _, ctr := range p.Spec.Containers {
		path := fmt.Sprintf("%s/logs/%s/%s.log", dir, p.Name, ctr.Name)
		logs, err := c.Kube.CoreV1().Pods(p.Namespace).GetLogs(p.Name, &corev1.PodLogOptions{Container: ctr.Name, TailLines: &g.tail}).DoRaw(ctx)
		if err != nil {
			g.b.fail(path, err)
			continue
		}
		g.b.add(path, logs)
	}
}

// podEndpoints fetches /readyz and /metrics of each container port named
// metrics, through the apiserver's pod proxy.
func (g *gatherer) podEndpoints(ctx context.Context, c *kube.Clients, dir string, p corev1.Pod) {
	for _, ctr := range p.Spec.Containers {
		for _, port := range ctr.Ports {
			if port.Name != "metrics" {
				continue
			}
			for _, what := range []string{"readyz", "metrics"} {
				path := fmt.Sprintf("%s/roles/%s/%s.txt", dir, p.Name, what)
				rctx, cancel := context.WithTimeout(ctx, gatherTimeout)
				data, err := c.Kube.CoreV1().RESTClient().Get().Namespace(p.Namespace).Resource("pods").
					Name(fmt.Sprintf("%s:%d", p.Name, port.ContainerPort)).SubResource("proxy").Suffix(what).DoRaw(rctx)
				cancel()
				if err != nil {
					g.b.fail(path, err)
					continue
				}
				g.b.add(path, data)
			}
		}
	}
}

// endpoint fetches /readyz and /metrics from a role reachable from here.
func (g *gatherer) endpoint(ctx context.Context, base string) {
	dir := "endpoints/" + safeName(strings.TrimPrefix(strings.TrimPrefix(base, "http://"), "https://"))
	for _, what := range []string{"readyz", "metrics"} {
		path := dir + "/" + what + ".txt"
		rctx, cancel := context.WithTimeout(ctx, gatherTimeout)
		data, err := httpGet(rctx, strings.TrimSuffix(base, "/")+"/"+what)
		cancel()
		if err != nil {
			g.b.fail(path, err)
			continue
		}
		g.b.add(path, data)
	}
}

// httpGet returns the body, whatever the status: a failing /readyz says
// why in its body, which is what the bundle is for.
func httpGet(ctx context.Context, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	return append([]byte(resp.Status+"\n"), body...), err
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

func safeName(s string) string {
	if s = unsafeChars.ReplaceAllString(s, "_"); s == "" {
		return "current"
	}
	return s
}

// write puts the bundle in a directory, or a .tar.gz, readable only by
// its owner: it describes the clusterset's layout.
func (b *bundle) write(to string) error {
	paths := make([]string, 0, len(b.files))
	for p := range b.files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	if !strings.HasSuffix(to, ".tar.gz") && !strings.HasSuffix(to, ".tgz") {
		for _, p := range paths {
			full := filepath.Join(to, filepath.FromSlash(p))
			if err := os.MkdirAll(filepath.Dir(full), 0o700); err != nil {
				return err
			}
			if err := os.WriteFile(full, b.files[p], 0o600); err != nil {
				return err
			}
		}
		return nil
	}
	f, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	zw := gzip.NewWriter(f)
	tw := tar.NewWriter(zw)
	root := strings.TrimSuffix(strings.TrimSuffix(filepath.Base(to), ".tar.gz"), ".tgz")
	now := time.Now()
	for _, p := range paths {
		hdr := &tar.Header{Name: root + "/" + p, Mode: 0o600, Size: int64(len(b.files[p])), ModTime: now, Typeflag: tar.TypeReg}
		if err := tw.WriteHeader(hdr); err != nil {
			f.Close()
			return err
		}
		if _, err := tw.Write(b.files[p]); err != nil {
			f.Close()
			return err
		}
	}
	if err := tw.Close(); err != nil {
		f.Close()
		return err
	}
	if err := zw.Close(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
