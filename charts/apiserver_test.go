package charts_test

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"

	"github.com/isthmus-dev/isthmus/test/cluster"
)

// TestChartDryRun applies every object of every combination with a
// server-side dry-run to the member's real kube-apiserver, with minimal
// ServiceMonitor and PrometheusRule CRDs of this test's own: the Prometheus operator's CRD is
// not vendored here, and the apiserver's checks of the object's metadata
// and of the CRD's group, version and kind are what matter.
func TestChartDryRun(t *testing.T) {
	ctx := ctxFor(t, 2*time.Minute)
	m := member(t)
	installServiceMonitorCRD(t, ctx, m)
	apply := dryRunApplier(t, m.Config)
	for _, tc := range chartCases {
		for _, obj := range renderChart(t, tc.set...) {
			if err := apply(ctx, obj, true); err != nil {
				t.Errorf("%s: server-side dry-run of %s %s: %v", tc.name, obj.GetKind(), obj.GetName(), err)
			}
		}
	}
}

// dryRunApplier server-side applies objects to the apiserver at cfg, with
// dry-run or for real.
func dryRunApplier(t *testing.T, cfg *rest.Config) func(ctx context.Context, obj *unstructured.Unstructured, dryRun bool) error {
	t.Helper()
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	return func(ctx context.Context, obj *unstructured.Unstructured, dryRun bool) error {
		mapping, err := mapper.RESTMapping(obj.GroupVersionKind().GroupKind(), obj.GroupVersionKind().Version)
		if err != nil {
			return fmt.Errorf("mapping %s: %w", obj.GroupVersionKind(), err)
		}
		var r dynamic.ResourceInterface = dyn.Resource(mapping.Resource)
		if obj.GetNamespace() != "" {
			r = dyn.Resource(mapping.Resource).Namespace(obj.GetNamespace())
		}
		opts := metav1.ApplyOptions{FieldManager: "helm-dry-run"}
		if dryRun {
			opts.DryRun = []string{metav1.DryRunAll}
		}
		_, err = r.Apply(ctx, obj.GetName(), obj, opts)
		return err
	}
}

// installServiceMonitorCRD installs ServiceMonitor and PrometheusRule CRDs
// that accept any spec and waits until they are served.
func installServiceMonitorCRD(t *testing.T, ctx context.Context, m *cluster.Cluster) {
	t.Helper()
	var list []*apiextensionsv1.CustomResourceDefinition
	for _, kind := range []string{"ServiceMonitor", "PrometheusRule"} {
		list = append(list, monitoringCRD(kind))
	}
	if err := m.InstallCRDs(ctx, list); err != nil {
		t.Fatalf("installing the ServiceMonitor and PrometheusRule CRDs: %v", err)
	}
}

// monitoringCRD is a CRD of the Prometheus operator's kind that accepts
// any spec.
func monitoringCRD(kind string) *apiextensionsv1.CustomResourceDefinition {
	singular := strings.ToLower(kind)
	return &apiextensionsv1.CustomResourceDefinition{
		ObjectMeta: metav1.ObjectMeta{Name: singular + "s.monitoring.coreos.com"},
		Spec: apiextensionsv1.CustomResourceDefinitionSpec{
			Group: "monitoring.coreos.com",
			Names: apiextensionsv1.CustomResourceDefinitionNames{Plural: singular + "s", Singular: singular, Kind: kind, ListKind: kind + "List"},
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
}

// TestChartNotes installs the chart with helm's server-side dry-run
// against the member and reads the NOTES.txt it prints: the stub block
// with a placeholder while there is no isthmus-dns Service, and with the
// Service's address once there is one (an upgrade), read by helm's lookup
// from the real apiserver.
func TestChartNotes(t *testing.T) {
	ctx := ctxFor(t, time.Minute)
	m := member(t)
	install := func() string {
		t.Helper()
		out, err := exec.Command(findHelm(t), "install", chartRelease, memberChart, "--dry-run=server",
			"--kubeconfig", m.Kubeconfig, "--namespace", "isthmus-system", "--set", "clusterID="+chartCluster).CombinedOutput()
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
	m := member(t)
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
