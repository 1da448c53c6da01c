package charts_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/api/crds"
	"github.com/isthmus-dev/isthmus/mcs/setup"
)

const (
	// nsPlaceholder stands for the namespace while the templates are made.
	nsPlaceholder = "x-broker-namespace-x"
)

var brokerTemplateFiles = []string{"namespace.yaml", "member-role.yaml", "reader-role.yaml", "member-policy.yaml", "member-policy-binding.yaml",
	"allowlist-policy.yaml", "tunnel-policy.yaml", "tunnel-policy-binding.yaml",
	"policy-reader-role.yaml", "policy-reader-binding.yaml", "priority-level.yaml", "flowschema.yaml",
	"hub-quota-serviceaccount.yaml", "hub-quota-role.yaml", "hub-quota-rolebinding.yaml"}

// brokerTemplates makes the chart's templates from setup.BrokerObjects: the
// namespace becomes a value, and a policy's CEL offset past the member (or
// tunnel) identities' prefix is computed from it.
func brokerTemplates() (map[string][]byte, error) {
	objs := setup.BrokerObjects(nsPlaceholder)
	prefix := "system:serviceaccount:" + nsPlaceholder + ":" + brokerv1.MemberServiceAccountPrefix
	tunnelPrefix := "system:serviceaccount:" + nsPlaceholder + ":" + brokerv1.TunnelServiceAccountPrefix
	out := map[string][]byte{}
	for i, obj := range objs {
		u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
		if err != nil {
			return nil, err
		}
		unstructured.RemoveNestedField(u, "metadata", "creationTimestamp")
		y, err := yaml.Marshal(u)
		if err != nil {
			return nil, err
		}
		text := string(y)
		if strings.HasPrefix(brokerTemplateFiles[i], "tunnel-policy") {
			text = strings.ReplaceAll(text, fmt.Sprintf("substring(%d)", len(tunnelPrefix)), `substring({{ len (include "isthmus-broker.tunnelPrefix" .) }})`)
		}
		text = strings.ReplaceAll(text, fmt.Sprintf("substring(%d)", len(prefix)), `substring({{ len (include "isthmus-broker.memberPrefix" .) }})`)
		text = strings.ReplaceAll(text, nsPlaceholder, "{{ .Values.namespace }}")
		out[brokerTemplateFiles[i]] = []byte("# Made from mcs/setup.BrokerObjects by `go test ./charts -run TestBrokerChart -update`: edit those, not this.\n" + text)
	}
	return out, nil
}

// TestBrokerChart keeps the isthmus-broker chart equal to what `isthmusctl
// broker install` applies: its templates are made from the same objects,
// and rendered for two namespaces they decode to exactly those objects;
// its CRDs are the generated ones. Then helm lint, and a server-side
// dry-run of the rendered manifests against a real kube-apiserver.
func TestBrokerChart(t *testing.T) {
	want, err := brokerTemplates()
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range want {
		path := filepath.Join(brokerChart, "templates", name)
		if *update {
			if err := os.WriteFile(path, data, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s differs from mcs/setup's objects (%v): run go test ./charts -run TestBrokerChart -update", path, err)
		}
	}
	for _, name := range []string{"broker.isthmus.dev_clusters.yaml", "broker.isthmus.dev_exportedservices.yaml", "broker.isthmus.dev_memberpolicies.yaml"} {
		chart, err1 := os.ReadFile(filepath.Join(brokerChart, "crds", name))
		gen, err2 := os.ReadFile(filepath.Join("../mcs/api/crds", name))
		if err1 != nil || err2 != nil || !bytes.Equal(chart, gen) {
			t.Errorf("charts/isthmus-broker/crds/%s differs from mcs/api/crds (%v %v): copy it after make generate", name, err1, err2)
		}
	}

	helm := findHelm(t)
	if out, err := exec.Command(helm, "lint", "--strict", brokerChart).CombinedOutput(); err != nil {
		t.Fatalf("helm lint: %v\n%s", err, out)
	}
	// A namespace that is no DNS label is refused by the values schema.
	if out, err := exec.Command(helm, "template", "isthmus-broker", brokerChart, "--kube-version", "1.37.2", "--set", "namespace=Bad_NS").CombinedOutput(); err == nil ||
		!strings.Contains(string(out), "does not match pattern") {
		t.Errorf("helm template with namespace=Bad_NS: %v\n%s", err, out)
	}
	var rendered []*unstructured.Unstructured
	for _, ns := range []string{brokerv1.DefaultBrokerNamespace, "hub-records"} {
		out, err := exec.Command(helm, "template", "isthmus-broker", brokerChart, "--kube-version", "1.37.2", "--set", "namespace="+ns).CombinedOutput()
		if err != nil {
			t.Fatalf("helm template: %v\n%s", err, out)
		}
		docs := withoutHubQuotaDeployment(decode(t, out))
		objs := setup.BrokerObjects(ns)
		if len(docs) != len(objs) {
			t.Fatalf("namespace %s: %d rendered objects, want %d", ns, len(docs), len(objs))
		}
		// Helm orders what it renders by kind, then by file name: match
		// each of isthmusctl's objects by kind and name.
		byName := map[string]*unstructured.Unstructured{}
		for _, d := range docs {
			byName[d.GetKind()+"/"+d.GetName()] = d
		}
		for _, obj := range objs {
			u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
			if err != nil {
				t.Fatal(err)
			}
			unstructured.RemoveNestedField(u, "metadata", "creationTimestamp")
			want := &unstructured.Unstructured{Object: u}
			doc, ok := byName[want.GetKind()+"/"+want.GetName()]
			if !ok {
				t.Errorf("namespace %s: the chart renders no %s %s", ns, want.GetKind(), want.GetName())
				continue
			}
			if w, g := normalize(t, u), normalize(t, doc.Object); !reflect.DeepEqual(w, g) {
				wy, _ := yaml.Marshal(w)
				gy, _ := yaml.Marshal(g)
				t.Errorf("namespace %s: rendered %s differs from isthmusctl's:\n--- chart\n%s\n--- isthmusctl\n%s", ns, doc.GetKind(), gy, wy)
			}
		}
		if ns == "hub-records" {
			// The dry-run below takes the Deployment too.
			rendered = decode(t, out)
		}
	}

	// Server-side dry-run against a real apiserver (the shared broker):
	// the CRDs as helm installs them, the namespace for real, then every
	// object.
	ctx := ctxFor(t, 2*time.Minute)
	list, err := crds.Broker()
	if err != nil {
		t.Fatal(err)
	}
	if err := clusters.Broker.InstallCRDs(ctx, list); err != nil {
		t.Fatal(err)
	}
	apply := dryRunApplier(t, clusters.Broker.Config)
	for i, obj := range rendered {
		// The namespace must exist for the dry-run of what lives in it.
		if err := apply(ctx, obj, i != 0); err != nil {
			t.Errorf("server-side dry-run of %s %s: %v", obj.GetKind(), obj.GetName(), err)
		}
	}
}

// withoutHubQuotaDeployment leaves out the record counter's Deployment,
// the one object of the chart that isthmusctl does not apply (it has no
// image to run); TestBrokerChartHubQuota checks it.
func withoutHubQuotaDeployment(docs []*unstructured.Unstructured) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, d := range docs {
		if d.GetKind() == "Deployment" && d.GetName() == setup.HubQuotaName {
			continue
		}
		out = append(out, d)
	}
	return out
}

// TestBrokerChartHubQuota: the broker chart runs the hub's record
// counter by default, in the broker namespace, with its own
// least-privilege identity (the Role broker install makes: list and
// watch of records and MemberPolicies, update of their status, nothing
// else), as a non-root pod that the namespace's Pod Security "restricted"
// admits; hubQuota.enabled=false leaves it out.
func TestBrokerChartHubQuota(t *testing.T) {
	helm := findHelm(t)
	render := func(set ...string) []*unstructured.Unstructured {
		args := []string{"template", "isthmus-broker", brokerChart, "--kube-version", "1.37.2", "--set", "namespace=hub-records"}
		for _, s := range set {
			args = append(args, "--set", s)
		}
		out, err := exec.Command(helm, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("helm template %v: %v\n%s", set, err, out)
		}
		return decode(t, out)
	}
	find := func(docs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
		for _, d := range docs {
			if d.GetKind() == kind && d.GetName() == name {
				return d
			}
		}
		return nil
	}
	docs := render("hubQuota.image.tag=v9", "hubQuota.debounce=2s")
	d := find(docs, "Deployment", setup.HubQuotaName)
	if d == nil {
		t.Fatal("the chart renders no record counter Deployment by default")
	}
	if d.GetNamespace() != "hub-records" {
		t.Errorf("Deployment in %q, want the broker namespace", d.GetNamespace())
	}
	var dep appsv1.Deployment
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(d.Object, &dep); err != nil {
		t.Fatal(err)
	}
	pod := dep.Spec.Template.Spec
	if pod.ServiceAccountName != setup.HubQuotaName {
		t.Errorf("serviceAccountName %q, want %s", pod.ServiceAccountName, setup.HubQuotaName)
	}
	c := pod.Containers[0]
	if c.Image != "ghcr.io/isthmus-dev/isthmus:v9" || !reflect.DeepEqual(c.Args, []string{"hub-quota"}) {
		t.Errorf("container runs %s %v, want ghcr.io/isthmus-dev/isthmus:v9 [hub-quota]", c.Image, c.Args)
	}
	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	for k, v := range map[string]string{"ISTHMUS_BROKER_NAMESPACE": "hub-records", "ISTHMUS_DEBOUNCE": "2s", "ISTHMUS_METRICS_ADDR": ":9472"} {
		if env[k] != v {
			t.Errorf("env %s=%q, want %q", k, env[k], v)
		}
	}
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" ||
		c.LivenessProbe == nil || c.LivenessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" {
		t.Errorf("probes %+v %+v, want /readyz and /healthz", c.ReadinessProbe, c.LivenessProbe)
	}
	psc, sc := pod.SecurityContext, c.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.SeccompProfile == nil ||
		sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 {
		t.Errorf("pod security %+v, container %+v: not what Pod Security restricted admits", psc, sc)
	}

	// Its pod is admitted where Pod Security "restricted" is enforced, as
	// in the broker namespace.
	ctx := ctxFor(t, time.Minute)
	if _, err := clusters.Broker.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "hub-quota-restricted",
		Labels: map[string]string{"pod-security.kubernetes.io/enforce": "restricted"}}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	// The broker runs no controllers: the ServiceAccount is made here.
	if _, err := clusters.Broker.Client.CoreV1().ServiceAccounts("hub-quota-restricted").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: setup.HubQuotaName}},
		metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "hub-quota", Namespace: "hub-quota-restricted"}, Spec: *pod.DeepCopy()}
	if _, err := clusters.Broker.Client.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
		t.Errorf("the record counter's pod under Pod Security restricted: %v", err)
	}

	role := find(docs, "Role", setup.HubQuotaName)
	if role == nil {
		t.Fatal("no Role isthmus-hub-quota")
	}
	var r rbacv1.Role
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(role.Object, &r); err != nil {
		t.Fatal(err)
	}
	got := map[string][]string{}
	for _, rule := range r.Rules {
		for _, res := range rule.Resources {
			got[res] = append(got[res], rule.Verbs...)
		}
	}
	want := map[string][]string{
		"exportedservices":      {"list", "watch"},
		"endpointslices":        {"list", "watch"},
		"memberpolicies":        {"get", "list", "watch"},
		"memberpolicies/status": {"get", "update"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Role isthmus-hub-quota grants %v, want only %v", got, want)
	}
	rb := find(docs, "RoleBinding", setup.HubQuotaName)
	if rb == nil || find(docs, "ServiceAccount", setup.HubQuotaName) == nil {
		t.Fatal("no RoleBinding or ServiceAccount isthmus-hub-quota")
	}
	subjects, _, _ := unstructured.NestedSlice(rb.Object, "subjects")
	if len(subjects) != 1 || subjects[0].(map[string]any)["name"] != setup.HubQuotaName || subjects[0].(map[string]any)["namespace"] != "hub-records" {
		t.Errorf("RoleBinding subjects %v, want only ServiceAccount hub-records/%s", subjects, setup.HubQuotaName)
	}

	if find(render("hubQuota.enabled=false"), "Deployment", setup.HubQuotaName) != nil {
		t.Error("hubQuota.enabled=false still renders the Deployment")
	}
	if out, err := exec.Command(helm, "template", "isthmus-broker", brokerChart, "--kube-version", "1.37.2", "--set", "hubQuota.debounce=soon").CombinedOutput(); err == nil ||
		!strings.Contains(string(out), "debounce") {
		t.Errorf("hubQuota.debounce=soon: %v\n%s", err, out)
	}
}

// normalize round-trips through JSON so numbers and empty values compare alike.
func normalize(t *testing.T, m map[string]any) map[string]any {
	t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}
