package charts_test

import (
	"os/exec"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
)

// chartCase is one combination of values the chart is rendered with, and
// the objects that combination must and must not render.
type chartCase struct {
	name       string
	set        []string
	want, none []string // "Kind/name"
}

// chartCases are the combinations of values; cmd/isthmus's
// TestChartRoleEnvironment renders the same ones and parses each role's
// environment with the role's real flags.
var chartCases = []chartCase{
	{name: "default",
		want: []string{"Deployment/isthmus-agent", "Deployment/isthmus-dns", "Deployment/isthmus-xds", "DaemonSet/isthmus-tunnel",
			"ServiceAccount/isthmus-agent", "ServiceAccount/isthmus-dns", "ServiceAccount/isthmus-xds", "ServiceAccount/isthmus-tunnel",
			"Service/isthmus-dns", "Service/isthmus-xds", "Service/isthmus-agent-metrics", "Service/isthmus-dns-metrics",
			"Service/isthmus-xds-metrics", "Service/isthmus-tunnel-metrics", "ConfigMap/isthmus-coredns-stub", "ConfigMap/isthmus-dashboard",
			"PodDisruptionBudget/isthmus-agent", "PodDisruptionBudget/isthmus-dns", "PodDisruptionBudget/isthmus-xds",
			"NetworkPolicy/isthmus-xds"},
		none: []string{"Deployment/isthmus", "Deployment/isthmus-gateway", "ServiceMonitor/isthmus", "PrometheusRule/isthmus", "ServiceAccount/isthmus-gateway", "RoleBinding/isthmus-dns"}},
	{name: "gateway", set: []string{"dataplane=gateway", "region=eu", "zone=eu-2", "podCIDRs={10.243.0.0/16}", "serviceCIDRs={10.99.0.0/16}",
		"xds.networkPolicy.grpcClients[0].namespaceSelector.matchLabels.team=shop"},
		want: []string{"Deployment/isthmus-gateway", "Service/isthmus-gateway", "ServiceAccount/isthmus-gateway",
			"ConfigMap/isthmus-gateway-bootstrap", "PodDisruptionBudget/isthmus-gateway", "DaemonSet/isthmus-tunnel"}},
	{name: "all", set: []string{"mode=all", "dns.clusterIP=" + chartDNSIP},
		want: []string{"Deployment/isthmus", "ServiceAccount/isthmus", "Service/isthmus-all-metrics", "Service/isthmus-dns", "ClusterRoleBinding/isthmus-dns"},
		none: []string{"Deployment/isthmus-agent", "DaemonSet/isthmus-tunnel", "ServiceAccount/isthmus-agent", "Service/isthmus-agent-metrics", "NetworkPolicy/isthmus-xds",
			"PodDisruptionBudget/isthmus-agent", "PodDisruptionBudget/isthmus-all"}},
	{name: "all gateway monitored", set: []string{"mode=all", "all.replicas=2", "dataplane=gateway", "metrics.serviceMonitor.enabled=true",
		"metrics.serviceMonitor.labels.release=prometheus", "metrics.prometheusRule.enabled=true", "metrics.prometheusRule.labels.release=prometheus", "logFormat=text", "broker.existingSecret=gitops-broker",
		"dns.clusterZone=clusters.local", "tunnel.endpoint=203.0.113.7:51820"},
		want: []string{"Deployment/isthmus", "Deployment/isthmus-gateway", "ServiceMonitor/isthmus", "PrometheusRule/isthmus", "PodDisruptionBudget/isthmus-all"}},
	{name: "single replicas, no dashboard", set: []string{"agent.replicas=1", "dns.replicas=1", "xds.replicas=1", "gateway.replicas=1",
		"dataplane=gateway", "metrics.dashboard.enabled=false", "xds.grpcAuth=anonymous", "agent.maxImportsPerCluster=1000000"},
		want: []string{"Deployment/isthmus-agent"},
		none: []string{"PodDisruptionBudget/isthmus-agent", "PodDisruptionBudget/isthmus-dns", "PodDisruptionBudget/isthmus-xds",
			"PodDisruptionBudget/isthmus-gateway", "ConfigMap/isthmus-dashboard"}},
}

// TestChartLint runs helm lint and checks that bad values are refused
// with a message that says what is wrong.
func TestChartLint(t *testing.T) {
	if out, err := exec.Command(findHelm(t), "lint", "--strict", memberChart, "--namespace", "isthmus-system", "--set", "clusterID=c").CombinedOutput(); err != nil {
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
		{[]string{"agent.maxImportsPerCluster=0"}, "maxImportsPerCluster"},
		{[]string{"agent.unknown=1"}, "unknown"},
	} {
		if out, err := helmTemplate(t, tc.set...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("helm template --set %v: %v, want an error naming %q\n%.300s", tc.set, err, tc.want, out)
		}
	}
	out, err := exec.Command(findHelm(t), "template", chartRelease, memberChart, "--namespace", "default", "--kube-version", "1.37.2", "--set", "clusterID=c").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "install into the namespace isthmus-system") {
		t.Errorf("a namespace other than isthmus-system: %v\n%s", err, out)
	}
}

// TestChartTemplate renders every combination and checks what it renders:
// the objects, every role's environment, the pods' security, and that
// every Service, PodDisruptionBudget and ServiceMonitor selects what it
// should.
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
				if !clusterScoped[d.GetKind()] && d.GetNamespace() != "isthmus-system" {
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
// capabilities, has a read-only root and no privilege escalation.
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

// checkRoleContainer: an isthmus container runs one role, is configured
// by plain ISTHMUS_* values (and the two downward-API variables they use),
// each set once, and is probed on its metrics port. Whether the role's
// flags accept that environment is cmd/isthmus's TestChartRoleEnvironment.
func checkRoleContainer(t *testing.T, name string, c map[string]any) {
	t.Helper()
	args, _, _ := unstructured.NestedStringSlice(c, "args")
	if len(args) != 1 {
		t.Fatalf("%s: args %v, want one role", name, args)
	}
	plain := map[string]bool{"HOST_IP": true, "POD_NAME": true}
	seen := map[string]bool{}
	list, _, _ := unstructured.NestedSlice(c, "env")
	for _, e := range list {
		e := e.(map[string]any)
		n, _ := e["name"].(string)
		_, hasValue := e["value"].(string)
		if !strings.HasPrefix(n, "ISTHMUS_") {
			if !plain[n] {
				t.Errorf("%s: environment variable %s is no flag and not used by one", name, n)
			}
			continue
		}
		if !hasValue {
			t.Errorf("%s: %s has no plain value", name, n)
		}
		if seen[n] {
			t.Errorf("%s: %s set twice", name, n)
		}
		seen[n] = true
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
	if pr := find(docs, "PrometheusRule", "isthmus"); pr != nil {
		groups, _, _ := unstructured.NestedSlice(pr.Object, "spec", "groups")
		if len(groups) == 0 || pr.GetLabels()["release"] != "prometheus" {
			t.Errorf("the PrometheusRule has %d groups and labels %v; want the rule file's and metrics.prometheusRule.labels", len(groups), pr.GetLabels())
		}
	}
}

// clusterScoped are the kinds the chart renders outside its namespace.
var clusterScoped = map[string]bool{
	"ClusterRole": true, "ClusterRoleBinding": true,
	"ValidatingAdmissionPolicy": true, "ValidatingAdmissionPolicyBinding": true,
}
