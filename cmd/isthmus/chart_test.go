package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"

	"github.com/isthmus-dev/isthmus/test/cluster"
	"github.com/isthmus-dev/isthmus/test/helmtest"
)

// The member chart is installed into member c (index chartMember) of the
// shared clusterset by the harness tests; its Service range is 10.99/16.
const (
	memberChart  = "../../charts/isthmus"
	chartMember  = 2
	chartDNSIP   = "10.99.0.53"
	chartRelease = "isthmus"
)

// chartCase is one combination of values the chart is rendered with, and
// the objects that combination must and must not render.
type chartCase struct {
	name       string
	set        []string
	want, none []string // "Kind/name"
}

var chartCases = []chartCase{
	{name: "default",
		want: []string{"Deployment/isthmus-agent", "Deployment/isthmus-dns", "Deployment/isthmus-xds", "DaemonSet/isthmus-tunnel",
			"ServiceAccount/isthmus-agent", "ServiceAccount/isthmus-dns", "ServiceAccount/isthmus-xds", "ServiceAccount/isthmus-tunnel",
			"Service/isthmus-dns", "Service/isthmus-xds", "Service/isthmus-agent-metrics", "Service/isthmus-dns-metrics",
			"Service/isthmus-xds-metrics", "Service/isthmus-tunnel-metrics", "ConfigMap/isthmus-coredns-stub", "ConfigMap/isthmus-dashboard",
			"PodDisruptionBudget/isthmus-agent", "PodDisruptionBudget/isthmus-dns", "PodDisruptionBudget/isthmus-xds",
			"NetworkPolicy/isthmus-xds"},
		none: []string{"Deployment/isthmus", "Deployment/isthmus-gateway", "ServiceMonitor/isthmus", "ServiceAccount/isthmus-gateway", "RoleBinding/isthmus-dns"}},
	{name: "gateway", set: []string{"dataplane=gateway", "region=eu", "zone=eu-2", "podCIDRs={10.243.0.0/16}", "serviceCIDRs={10.99.0.0/16}",
		"xds.networkPolicy.grpcClients[0].namespaceSelector.matchLabels.team=shop"},
		want: []string{"Deployment/isthmus-gateway", "Service/isthmus-gateway", "ServiceAccount/isthmus-gateway",
			"ConfigMap/isthmus-gateway-bootstrap", "PodDisruptionBudget/isthmus-gateway", "DaemonSet/isthmus-tunnel"}},
	{name: "all", set: []string{"mode=all", "dns.clusterIP=" + chartDNSIP},
		want: []string{"Deployment/isthmus", "ServiceAccount/isthmus", "Service/isthmus-all-metrics", "Service/isthmus-dns", "ClusterRoleBinding/isthmus-dns"},
		none: []string{"Deployment/isthmus-agent", "DaemonSet/isthmus-tunnel", "ServiceAccount/isthmus-agent", "Service/isthmus-agent-metrics", "NetworkPolicy/isthmus-xds",
			"PodDisruptionBudget/isthmus-agent", "PodDisruptionBudget/isthmus-all"}},
	{name: "all gateway monitored", set: []string{"mode=all", "all.replicas=2", "dataplane=gateway", "metrics.serviceMonitor.enabled=true",
		"metrics.serviceMonitor.labels.release=prometheus", "dns.clusterZone=clusters.local", "tunnel.endpoint=203.0.113.7:51820"},
		want: []string{"Deployment/isthmus", "Deployment/isthmus-gateway", "ServiceMonitor/isthmus", "PodDisruptionBudget/isthmus-all"}},
	{name: "single replicas, no dashboard", set: []string{"agent.replicas=1", "dns.replicas=1", "xds.replicas=1", "gateway.replicas=1",
		"dataplane=gateway", "metrics.dashboard.enabled=false", "xds.caSecret="},
		want: []string{"Deployment/isthmus-agent"},
		none: []string{"PodDisruptionBudget/isthmus-agent", "PodDisruptionBudget/isthmus-dns", "PodDisruptionBudget/isthmus-xds",
			"PodDisruptionBudget/isthmus-gateway", "ConfigMap/isthmus-dashboard"}},
}

// renderChart runs helm template for member c with the values set.
func renderChart(t *testing.T, set ...string) []*unstructured.Unstructured {
	t.Helper()
	out, err := helmTemplate(t, set...)
	if err != nil {
		t.Fatalf("helm template %v: %v", set, err)
	}
	docs, err := helmtest.Decode(out)
	if err != nil {
		t.Fatal(err)
	}
	return docs
}

func helmTemplate(t *testing.T, set ...string) ([]byte, error) {
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
		return nil, fmt.Errorf("%w: %s", err, stderr.String())
	}
	return out, nil
}

func find(docs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	for _, d := range docs {
		if d.GetKind() == kind && d.GetName() == name {
			return d
		}
	}
	return nil
}

// TestChartLint runs helm lint and checks that bad values are refused
// with a message that says what is wrong.
func TestChartLint(t *testing.T) {
	helm := helmtest.Find(t, "../..")
	if out, err := exec.Command(helm, "lint", "--strict", memberChart, "--namespace", "isthmus-system", "--set", "clusterID=c").CombinedOutput(); err != nil {
		t.Fatalf("helm lint: %v\n%s", err, out)
	}
	for _, tc := range []struct {
		set  []string
		want string
	}{
		{[]string{"clusterID="}, "clusterID"},
		{[]string{"clusterID=Bad_ID"}, "does not match pattern"},
		{[]string{"mode=sidecar"}, "mode"},
		{[]string{"dataplane=mesh"}, "dataplane"},
		{[]string{"tunnel.endpoint=nowhere"}, "endpoint"},
		{[]string{"gateway.ingressPort=70000"}, "ingressPort"},
		{[]string{"agent.leaseDuration=soon"}, "leaseDuration"},
		{[]string{"agent.unknown=1"}, "unknown"},
	} {
		if out, err := helmTemplate(t, tc.set...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("helm template --set %v: %v, want an error naming %q\n%.300s", tc.set, err, tc.want, out)
		}
	}
	out, err := exec.Command(helm, "template", chartRelease, memberChart, "--namespace", "default", "--kube-version", "1.37.2", "--set", "clusterID=c").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "install into the namespace isthmus-system") {
		t.Errorf("a namespace other than isthmus-system: %v\n%s", err, out)
	}
}

// TestChartTemplate renders every combination and checks what it renders:
// the objects, every role's environment against the role's real flags,
// the pods' security, and that every Service, PodDisruptionBudget and
// ServiceMonitor selects what it should.
func TestChartTemplate(t *testing.T) {
	for _, tc := range chartCases {
		t.Run(tc.name, func(t *testing.T) {
			docs := renderChart(t, tc.set...)
			for _, w := range tc.want {
				kind, name, _ := strings.Cut(w, "/")
				if find(docs, kind, name) == nil {
					t.Errorf("%s not rendered", w)
				}
			}
			for _, n := range tc.none {
				kind, name, _ := strings.Cut(n, "/")
				if find(docs, kind, name) != nil {
					t.Errorf("%s rendered, but should not be", n)
				}
			}
			for _, d := range docs {
				if d.GetKind() != "ClusterRole" && d.GetKind() != "ClusterRoleBinding" && d.GetNamespace() != "isthmus-system" {
					t.Errorf("%s %s is in namespace %q", d.GetKind(), d.GetName(), d.GetNamespace())
				}
				checkNoWildcards(t, d)
				if pod := podTemplate(t, d); pod != nil {
					checkPod(t, d.GetKind()+"/"+d.GetName(), pod)
				}
			}
			checkSelectors(t, docs)
			checkBindings(t, docs, slices.Contains(tc.set, "mode=all"))
		})
	}
}

// checkBindings: each role's rights go to its own ServiceAccount, or to
// the `isthmus all` pod's in mode all, and to no one else.
func checkBindings(t *testing.T, docs []*unstructured.Unstructured, all bool) {
	t.Helper()
	n := 0
	for _, d := range docs {
		if d.GetKind() != "ClusterRoleBinding" && d.GetKind() != "RoleBinding" {
			continue
		}
		n++
		want := d.GetName()
		if all {
			want = "isthmus"
		}
		subjects, _, _ := unstructured.NestedSlice(d.Object, "subjects")
		ref, _, _ := unstructured.NestedString(d.Object, "roleRef", "name")
		if len(subjects) != 1 || subjects[0].(map[string]any)["name"] != want || subjects[0].(map[string]any)["namespace"] != "isthmus-system" || ref != d.GetName() {
			t.Errorf("%s %s binds %s to %v, want to isthmus-system/%s", d.GetKind(), d.GetName(), ref, subjects, want)
		}
		if sa := find(docs, "ServiceAccount", want); sa == nil {
			t.Errorf("%s %s binds the ServiceAccount %s, which is not rendered", d.GetKind(), d.GetName(), want)
		}
	}
	// Four ClusterRoleBindings, and RoleBindings for all but dns.
	if n != 7 {
		t.Errorf("%d bindings rendered, want 7", n)
	}
}

// podTemplate is a workload's pod template, nil for other kinds.
func podTemplate(t *testing.T, d *unstructured.Unstructured) map[string]any {
	t.Helper()
	if d.GetKind() != "Deployment" && d.GetKind() != "DaemonSet" {
		return nil
	}
	tmpl, ok, err := unstructured.NestedMap(d.Object, "spec", "template")
	if err != nil || !ok {
		t.Fatalf("%s %s has no pod template (%v)", d.GetKind(), d.GetName(), err)
	}
	return tmpl
}

func checkNoWildcards(t *testing.T, d *unstructured.Unstructured) {
	t.Helper()
	if d.GetKind() != "ClusterRole" && d.GetKind() != "Role" {
		return
	}
	rules, _, _ := unstructured.NestedSlice(d.Object, "rules")
	for _, r := range rules {
		for _, field := range []string{"apiGroups", "resources", "verbs", "resourceNames"} {
			vals, _, _ := unstructured.NestedStringSlice(r.(map[string]any), field)
			if slices.Contains(vals, "*") {
				t.Errorf("%s %s has a wildcard in %s", d.GetKind(), d.GetName(), field)
			}
		}
	}
}

// checkPod: the tunnel's pods (the tunnel role and `isthmus all`) alone
// have the host network, NET_ADMIN (nothing else) and /dev/net/tun; every
// other pod runs as non-root with nothing added; every container drops all
// capabilities, has a read-only root and no privilege escalation; every
// isthmus container's environment is accepted by the role's own flags.
func checkPod(t *testing.T, what string, tmpl map[string]any) {
	t.Helper()
	spec := tmpl["spec"].(map[string]any)
	containers, _, _ := unstructured.NestedSlice(spec, "containers")
	args, _, _ := unstructured.NestedStringSlice(containers[0].(map[string]any), "args")
	tunnelPod := slices.Equal(args, []string{"tunnel"}) || slices.Equal(args, []string{"all"})
	hostNet, _, _ := unstructured.NestedBool(spec, "hostNetwork")
	if hostNet != tunnelPod {
		t.Errorf("%s: hostNetwork %v", what, hostNet)
	}
	volumes, _, _ := unstructured.NestedSlice(spec, "volumes")
	hasTun := false
	for _, v := range volumes {
		if p, _, _ := unstructured.NestedString(v.(map[string]any), "hostPath", "path"); p != "" {
			if p != "/dev/net/tun" {
				t.Errorf("%s mounts the host's %s", what, p)
			}
			hasTun = true
		}
	}
	if hasTun != tunnelPod {
		t.Errorf("%s: /dev/net/tun mounted: %v", what, hasTun)
	}
	if seccomp, _, _ := unstructured.NestedString(spec, "securityContext", "seccompProfile", "type"); seccomp != "RuntimeDefault" {
		t.Errorf("%s: pod seccomp profile %q", what, seccomp)
	}
	if nonRoot, _, _ := unstructured.NestedBool(spec, "securityContext", "runAsNonRoot"); nonRoot == tunnelPod {
		t.Errorf("%s: runAsNonRoot %v", what, nonRoot)
	}
	for _, c := range containers {
		c := c.(map[string]any)
		name := what + "/" + c["name"].(string)
		sc, _, _ := unstructured.NestedMap(c, "securityContext")
		if ro, _, _ := unstructured.NestedBool(sc, "readOnlyRootFilesystem"); !ro {
			t.Errorf("%s: root filesystem writable", name)
		}
		if esc, ok, _ := unstructured.NestedBool(sc, "allowPrivilegeEscalation"); !ok || esc {
			t.Errorf("%s: privilege escalation not denied", name)
		}
		drop, _, _ := unstructured.NestedStringSlice(sc, "capabilities", "drop")
		add, _, _ := unstructured.NestedStringSlice(sc, "capabilities", "add")
		wantAdd := []string(nil)
		if tunnelPod {
			wantAdd = []string{"NET_ADMIN"}
		}
		if !slices.Equal(drop, []string{"ALL"}) || !slices.Equal(add, wantAdd) {
			t.Errorf("%s: capabilities drop %v add %v, want drop [ALL] add %v", name, drop, add, wantAdd)
		}
		if _, ok := c["resources"].(map[string]any)["requests"]; !ok {
			t.Errorf("%s: no resource requests", name)
		}
		if c["name"] != "envoy" {
			checkRoleContainer(t, name, c)
		}
	}
}

// checkRoleContainer parses an isthmus container's environment with the
// flag set its role really has, and checks the metrics port it names is
// the one the probes use.
func checkRoleContainer(t *testing.T, name string, c map[string]any) {
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
		v, hasValue := e["value"].(string)
		if !strings.HasPrefix(n, envPrefix) {
			if _, known := plain[n]; !known {
				t.Errorf("%s: environment variable %s is no flag and not used by one", name, n)
			}
			continue
		}
		if !hasValue {
			t.Errorf("%s: %s has no plain value", name, n)
		}
		for k, val := range plain {
			v = strings.ReplaceAll(v, "$("+k+")", val)
		}
		if _, dup := env[n]; dup {
			t.Errorf("%s: %s set twice", name, n)
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
	if port == "" || port != metricsPort {
		t.Errorf("%s: --metrics-addr port %q, container's metrics port %q", name, port, metricsPort)
	}
	for _, probe := range []string{"livenessProbe", "readinessProbe"} {
		if p, ok, _ := unstructured.NestedString(c, probe, "httpGet", "port"); ok && p != "metrics" {
			t.Errorf("%s: %s on port %q", name, probe, p)
		}
	}
	if _, ok, _ := unstructured.NestedMap(c, "livenessProbe"); !ok {
		t.Errorf("%s: no liveness probe", name)
	}
	// The tunnel's stand-bys are not ready by design; every other role
	// says when it is.
	if _, ok, _ := unstructured.NestedMap(c, "readinessProbe"); !ok && args[0] != "tunnel" {
		t.Errorf("%s: no readiness probe", name)
	}
}

// roleFlagSet is the flag set `isthmus <role>` parses, built the way
// runRoles builds it.
func roleFlagSet(t *testing.T, name string) *flag.FlagSet {
	t.Helper()
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var c common
	if name == "all" {
		c.register(fs, allMetricsAddr)
		for _, r := range roles() {
			r.flags(fs, r.name+"-")
		}
		return fs
	}
	for _, r := range roles() {
		if r.name == name {
			c.register(fs, r.metricsAddr)
			r.flags(fs, "")
			return fs
		}
	}
	t.Fatalf("no role %q", name)
	return nil
}

// checkSelectors: every Service, PodDisruptionBudget and NetworkPolicy
// selects the pods of some rendered workload (the xDS policy lets the
// gateway's in), and the ServiceMonitor selects every metrics Service.
func checkSelectors(t *testing.T, docs []*unstructured.Unstructured) {
	t.Helper()
	var pods []labels.Set
	for _, d := range docs {
		if tmpl := podTemplate(t, d); tmpl != nil {
			l, _, _ := unstructured.NestedStringMap(tmpl, "metadata", "labels")
			pods = append(pods, l)
		}
	}
	selects := func(sel map[string]string) bool {
		for _, p := range pods {
			if labels.SelectorFromSet(sel).Matches(p) {
				return true
			}
		}
		return false
	}
	var metricsServices []labels.Set
	for _, d := range docs {
		var sel map[string]string
		switch d.GetKind() {
		case "Service":
			sel, _, _ = unstructured.NestedStringMap(d.Object, "spec", "selector")
			if strings.HasSuffix(d.GetName(), "-metrics") {
				metricsServices = append(metricsServices, d.GetLabels())
			}
		case "PodDisruptionBudget":
			sel, _, _ = unstructured.NestedStringMap(d.Object, "spec", "selector", "matchLabels")
		case "NetworkPolicy":
			sel, _, _ = unstructured.NestedStringMap(d.Object, "spec", "podSelector", "matchLabels")
			ingress, _, _ := unstructured.NestedSlice(d.Object, "spec", "ingress")
			from, _, _ := unstructured.NestedSlice(ingress[0].(map[string]any), "from")
			gw, _, _ := unstructured.NestedStringMap(from[0].(map[string]any), "podSelector", "matchLabels")
			if find(docs, "Deployment", "isthmus-gateway") != nil && !selects(gw) {
				t.Errorf("NetworkPolicy %s does not let the gateway pods in (%v)", d.GetName(), gw)
			}
		default:
			continue
		}
		if len(sel) == 0 || !selects(sel) {
			t.Errorf("%s %s selects no rendered pod (%v)", d.GetKind(), d.GetName(), sel)
		}
	}
	if sm := find(docs, "ServiceMonitor", "isthmus"); sm != nil {
		sel, _, _ := unstructured.NestedStringMap(sm.Object, "spec", "selector", "matchLabels")
		for _, l := range metricsServices {
			if !labels.SelectorFromSet(sel).Matches(l) {
				t.Errorf("the ServiceMonitor does not select the metrics Service labelled %v", l)
			}
		}
		if sm.GetLabels()["release"] != "prometheus" {
			t.Errorf("ServiceMonitor labels %v lack metrics.serviceMonitor.labels", sm.GetLabels())
		}
	}
}

// TestChartDryRun applies every object of every combination with a
// server-side dry-run to member c's real kube-apiserver (after
// isthmusctl join, which made isthmus-system), with a minimal
// ServiceMonitor CRD of this test's own: the Prometheus operator's CRD
// is not vendored here, and the apiserver's checks of the object's
// metadata and of the CRD's group, version and kind are what matter.
func TestChartDryRun(t *testing.T) {
	clusterset(t)
	ctx := ctxFor(t, 2*time.Minute)
	m := clusters.Members[chartMember]
	installServiceMonitorCRD(t, ctx, m)
	apply := dryRunApplier(t, m)
	for _, tc := range chartCases {
		for _, obj := range renderChart(t, tc.set...) {
			if err := apply(ctx, obj); err != nil {
				t.Errorf("%s: server-side dry-run of %s %s: %v", tc.name, obj.GetKind(), obj.GetName(), err)
			}
		}
	}
}

// dryRunApplier server-side applies objects to m with dry-run.
func dryRunApplier(t *testing.T, m *cluster.Cluster) func(context.Context, *unstructured.Unstructured) error {
	t.Helper()
	dyn, err := dynamic.NewForConfig(m.Config)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(m.Config)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	return func(ctx context.Context, obj *unstructured.Unstructured) error {
		mapping, err := mapper.RESTMapping(obj.GroupVersionKind().GroupKind(), obj.GroupVersionKind().Version)
		if err != nil {
			return fmt.Errorf("mapping %s: %w", obj.GroupVersionKind(), err)
		}
		var r dynamic.ResourceInterface = dyn.Resource(mapping.Resource)
		if obj.GetNamespace() != "" {
			r = dyn.Resource(mapping.Resource).Namespace(obj.GetNamespace())
		}
		_, err = r.Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: "helm-dry-run", DryRun: []string{metav1.DryRunAll}})
		return err
	}
}

// installServiceMonitorCRD installs a ServiceMonitor CRD that accepts any
// spec and waits until it is served.
func installServiceMonitorCRD(t *testing.T, ctx context.Context, m *cluster.Cluster) {
	t.Helper()
	crd := &apiextensionsv1.CustomResourceDefinition{
		ObjectMeta: metav1.ObjectMeta{Name: "servicemonitors.monitoring.coreos.com"},
		Spec: apiextensionsv1.CustomResourceDefinitionSpec{
			Group: "monitoring.coreos.com",
			Names: apiextensionsv1.CustomResourceDefinitionNames{Plural: "servicemonitors", Singular: "servicemonitor", Kind: "ServiceMonitor", ListKind: "ServiceMonitorList"},
			Scope: apiextensionsv1.NamespaceScoped,
			Versions: []apiextensionsv1.CustomResourceDefinitionVersion{{Name: "v1", Served: true, Storage: true,
				Schema: &apiextensionsv1.CustomResourceValidation{OpenAPIV3Schema: &apiextensionsv1.JSONSchemaProps{
					Type: "object",
					Properties: map[string]apiextensionsv1.JSONSchemaProps{
						"spec": {Type: "object", XPreserveUnknownFields: ptrTo(true)},
					},
				}}}},
		},
	}
	if err := m.InstallCRDs(ctx, []*apiextensionsv1.CustomResourceDefinition{crd}); err != nil {
		t.Fatalf("installing the ServiceMonitor CRD: %v", err)
	}
}

func ptrTo[T any](v T) *T { return &v }

// TestChartNotes installs the chart with helm's server-side dry-run
// against member c and reads the NOTES.txt it prints: the stub block
// with a placeholder while there is no isthmus-dns Service, and with the
// Service's address once there is one (an upgrade), read by helm's lookup
// from the real apiserver.
func TestChartNotes(t *testing.T) {
	clusterset(t)
	ctx := ctxFor(t, time.Minute)
	m := clusters.Members[chartMember]
	install := func() string {
		t.Helper()
		out, err := exec.Command(helmtest.Find(t, "../.."), "install", chartRelease, memberChart, "--dry-run=server",
			"--kubeconfig", m.Kubeconfig, "--namespace", "isthmus-system", "--set", "clusterID="+ids[chartMember]).CombinedOutput()
		if err != nil {
			t.Fatalf("helm install --dry-run=server: %v\n%s", err, out)
		}
		_, notes, ok := strings.Cut(string(out), "NOTES:")
		if !ok {
			t.Fatalf("no NOTES in:\n%s", out)
		}
		return notes
	}
	if notes := install(); !strings.Contains(notes, "forward . ISTHMUS_DNS_CLUSTER_IP:53") || !strings.Contains(notes, "get service isthmus-dns") {
		t.Errorf("NOTES before the Service exists:\n%s", notes)
	}
	svc, err := m.Client.CoreV1().Services("isthmus-system").Create(ctx, &corev1.Service{
		// As the first install left it: owned by the release.
		ObjectMeta: metav1.ObjectMeta{Name: "isthmus-dns", Labels: map[string]string{"app.kubernetes.io/managed-by": "Helm"},
			Annotations: map[string]string{"meta.helm.sh/release-name": chartRelease, "meta.helm.sh/release-namespace": "isthmus-system"}},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = m.Client.CoreV1().Services("isthmus-system").Delete(context.Background(), "isthmus-dns", metav1.DeleteOptions{})
	})
	if notes := install(); !strings.Contains(notes, "forward . "+svc.Spec.ClusterIP+":53") {
		t.Errorf("NOTES once the Service has address %s:\n%s", svc.Spec.ClusterIP, notes)
	}
}

// TestChartPodSecurity creates every pod the chart's workloads make, with
// a server-side dry-run, in namespaces enforcing the Pod Security
// Standards (the apiserver's own admission): every pod but the tunnel's
// meets "restricted"; the tunnel's (and `isthmus all`'s) needs
// "privileged" (host network, /dev/net/tun, NET_ADMIN), as the README
// says.
func TestChartPodSecurity(t *testing.T) {
	ctx := ctxFor(t, time.Minute)
	m := clusters.Members[chartMember]
	for _, level := range []string{"restricted", "baseline", "privileged"} {
		_, err := m.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "psa-" + level,
			Labels: map[string]string{"pod-security.kubernetes.io/enforce": level}}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	pods := map[string]*corev1.Pod{}
	for _, set := range [][]string{{"dataplane=gateway"}, {"mode=all"}} {
		for _, d := range renderChart(t, set...) {
			tmpl := podTemplate(t, d)
			if tmpl == nil {
				continue
			}
			var pod corev1.Pod
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(tmpl, &pod); err != nil {
				t.Fatalf("%s %s: %v", d.GetKind(), d.GetName(), err)
			}
			pod.Name = d.GetName()
			pod.Spec.ServiceAccountName = "" // the chart's ServiceAccounts live in isthmus-system
			pods[d.GetName()] = &pod
		}
	}
	for name, pod := range pods {
		privileged := name == "isthmus-tunnel" || name == "isthmus"
		for _, level := range []string{"restricted", "baseline", "privileged"} {
			p := pod.DeepCopy()
			p.Namespace = "psa-" + level
			_, err := m.Client.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
			if want := !privileged || level == "privileged"; (err == nil) != want {
				t.Errorf("pod of %s under Pod Security %q: admitted %v, want %v (%v)", name, level, err == nil, want, err)
			}
		}
	}
	if len(pods) != 6 {
		t.Errorf("%d workloads checked, want agent, dns, xds, tunnel, gateway and all", len(pods))
	}
}
