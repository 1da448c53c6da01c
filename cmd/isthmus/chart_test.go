package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/isthmus-dev/isthmus/test/helmtest"
)

// The chart's own tests are in charts/. These check the chart against
// this binary's wiring: each role's environment against its real flags,
// and the roles run with their chart identities. The member chart is
// installed into member c (index chartMember) of the shared clusterset by
// the harness tests; its Service range is 10.99/16.
const (
	memberChart  = "../../charts/isthmus"
	chartMember  = 2
	chartDNSIP   = "10.99.0.53"
	chartRelease = "isthmus"
)

// chartValues are the combinations of values charts/'s TestChartTemplate
// renders (its chartCases), each of which changes some role's
// environment.
var chartValues = map[string][]string{
	"default": nil,
	"gateway": {"dataplane=gateway", "region=eu", "zone=eu-2", "podCIDRs={10.243.0.0/16}", "serviceCIDRs={10.99.0.0/16}",
		"xds.networkPolicy.grpcClients[0].namespaceSelector.matchLabels.team=shop"},
	"all": {"mode=all", "dns.clusterIP=" + chartDNSIP},
	"all gateway monitored": {"mode=all", "all.replicas=2", "dataplane=gateway", "metrics.serviceMonitor.enabled=true",
		"metrics.serviceMonitor.labels.release=prometheus", "metrics.prometheusRule.enabled=true", "metrics.prometheusRule.labels.release=prometheus", "logFormat=text", "broker.existingSecret=gitops-broker",
		"dns.clusterZone=clusters.local", "tunnel.endpoint=203.0.113.7:51820"},
	"single replicas, no dashboard": {"agent.replicas=1", "dns.replicas=1", "xds.replicas=1", "gateway.replicas=1",
		"dataplane=gateway", "metrics.dashboard.enabled=false", "xds.grpcAuth=anonymous", "agent.maxImportsPerCluster=1000000"},
}

// renderChart runs helm template for member c with the values set.
func renderChart(t *testing.T, set ...string) []*unstructured.Unstructured {
	t.Helper()
	args := []string{"template", chartRelease, memberChart, "--namespace", "isthmus-system", "--kube-version", "1.37.2", "--set", "clusterID=" + ids[chartMember]}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(helmtest.Find(t, "../.."), args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helm template %v: %v: %s", set, err, stderr.String())
	}
	docs, err := helmtest.Decode(out)
	if err != nil {
		t.Fatal(err)
	}
	return docs
}

func find(docs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	for _, d := range docs {
		if d.GetKind() == kind && d.GetName() == name {
			return d
		}
	}
	return nil
}

// TestChartRoleEnvironment renders every combination and parses each
// isthmus container's environment with the flag set its role really has.
func TestChartRoleEnvironment(t *testing.T) {
	for name, set := range chartValues {
		t.Run(name, func(t *testing.T) {
			n := 0
			for _, d := range renderChart(t, set...) {
				if d.GetKind() != "Deployment" && d.GetKind() != "DaemonSet" {
					continue
				}
				containers, _, _ := unstructured.NestedSlice(d.Object, "spec", "template", "spec", "containers")
				for _, c := range containers {
					c := c.(map[string]any)
					if c["name"] != "envoy" {
						checkRoleEnvironment(t, d.GetKind()+"/"+d.GetName()+"/"+c["name"].(string), c)
						n++
					}
				}
			}
			if n == 0 {
				t.Error("no isthmus container rendered")
			}
		})
	}
}

// checkRoleEnvironment parses an isthmus container's environment with the
// flag set its role really has, and checks the metrics port it names is
// the one the container exposes.
func checkRoleEnvironment(t *testing.T, name string, c map[string]any) {
	t.Helper()
	args, _, _ := unstructured.NestedStringSlice(c, "args")
	if len(args) != 1 {
		t.Fatalf("%s: args %v, want one role", name, args)
	}
	fs := roleFlagSet(t, args[0])
	env := map[string]string{}
	plain := map[string]string{"HOST_IP": "192.0.2.10", "POD_NAME": "isthmus-tunnel-x7k2p"}
	list, _, _ := unstructured.NestedSlice(c, "env")
	for _, e := range list {
		e := e.(map[string]any)
		n, _ := e["name"].(string)
		v, _ := e["value"].(string)
		if !strings.HasPrefix(n, envPrefix) {
			continue
		}
		for k, val := range plain {
			v = strings.ReplaceAll(v, "$("+k+")", val)
		}
		env[n] = v
	}
	for n := range env {
		found := false
		fs.VisitAll(func(f *flag.Flag) { found = found || envName(f.Name) == n })
		if !found && n != "ISTHMUS_LOG_LEVEL" {
			t.Errorf("%s: %s names no flag of isthmus %s", name, n, args[0])
		}
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	if err := parseWithEnv(fs, nil, lookup); err != nil {
		t.Errorf("%s: isthmus %s refuses its environment: %v", name, args[0], err)
	}
	if got := fs.Lookup("cluster-id").Value.String(); got != ids[chartMember] {
		t.Errorf("%s: --cluster-id %q", name, got)
	}
	_, port, _ := net.SplitHostPort(fs.Lookup("metrics-addr").Value.String())
	ports, _, _ := unstructured.NestedSlice(c, "ports")
	var metricsPort string
	for _, p := range ports {
		if p.(map[string]any)["name"] == "metrics" {
			metricsPort = fmt.Sprint(p.(map[string]any)["containerPort"])
		}
	}
	if len(ports) == 0 {
		// The tunnel, on the host network, declares no ports (each would
		// be a host port, refused to its surging pod); its probe names
		// the metrics port.
		if probe, ok, _ := unstructured.NestedFieldNoCopy(c, "livenessProbe", "httpGet", "port"); ok {
			metricsPort = fmt.Sprint(probe)
		}
	}
	if port == "" || port != metricsPort {
		t.Errorf("%s: --metrics-addr port %q, container's metrics port %q", name, port, metricsPort)
	}
}

// roleFlagSet is the flag set `isthmus <role>` parses, built the way
// runRoles builds it.
func roleFlagSet(t *testing.T, name string) *flag.FlagSet {
	t.Helper()
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var c common
	var f facts // registered once per process, as runRoles does
	if name == "all" {
		c.register(fs, allMetricsAddr)
		f.register(fs)
		for _, r := range roles() {
			r.flags(fs, r.name+"-")
		}
		return fs
	}
	for _, r := range roles() {
		if r.name == name {
			c.register(fs, r.metricsAddr)
			if r.facts {
				f.register(fs)
			}
			r.flags(fs, "")
			return fs
		}
	}
	t.Fatalf("no role %q", name)
	return nil
}

func ptrTo[T any](v T) *T { return &v }
