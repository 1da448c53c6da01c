package records

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/tools/cache"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/api/crds"
	"github.com/isthmus-dev/isthmus/test/cluster"
)

func TestDecodeReadsWhatTheAPIServerAccepts(t *testing.T) {
	want := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, ts := range []string{"2020-01-01T00:00:00Z", "2020-01-01t00:00:00z", "2020-01-01T00:00:00x0Z", "2020-01-01t01:00:00+01:00"} {
		u := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "broker.isthmus.dev/v1alpha1", "kind": "ExportedService",
			"metadata": map[string]any{"name": "b-demo-echo"},
			"spec":     map[string]any{"sourceCluster": "b", "exportCreationTimestamp": ts, "serviceName": "echo", "serviceNamespace": "demo"},
		}}
		var es brokerv1.ExportedService
		if err := Decode(u, &es); err != nil {
			t.Errorf("%s: %v", ts, err)
			continue
		}
		if !es.Spec.ExportCreationTimestamp.Time.Equal(want) {
			t.Errorf("%s decoded as %v; want %v", ts, es.Spec.ExportCreationTimestamp.Time, want)
		}
	}
	// A string that is no time under a time key is still refused, and a
	// date-looking string under another key is left as it is.
	u := &unstructured.Unstructured{Object: map[string]any{
		"metadata": map[string]any{"name": "x", "labels": map[string]any{"note": "2020-01-01t00:00:00z"}},
		"spec":     map[string]any{"exportCreationTimestamp": "yesterday"},
	}}
	var es brokerv1.ExportedService
	if err := Decode(u, &es); err == nil {
		t.Error("a timestamp of \"yesterday\" decoded")
	}
	u.Object["spec"] = map[string]any{"exportCreationTimestamp": "2020-01-01T00:00:00Z"}
	if err := Decode(u, &es); err != nil || es.Labels["note"] != "2020-01-01t00:00:00z" {
		t.Errorf("a label value was rewritten or the record refused: %v %v", es.Labels, err)
	}
}

// TestOneOddRecordStallsNoOne writes, with the hub's own apiserver, records
// in the forms it accepts but a strict decoder refuses, and checks that
// the informer syncs, reads them (listed and watched), and reports nothing
// undecodable.
func TestOneOddRecordStallsNoOne(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cs, err := cluster.New(ctx, cluster.Options{Broker: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cs.Stop)
	hub := cs.Broker
	defs, err := crds.Broker()
	if err != nil {
		t.Fatal(err)
	}
	if err := hub.InstallCRDs(ctx, defs); err != nil {
		t.Fatal(err)
	}
	ns := brokerv1.DefaultBrokerNamespace
	if _, err := hub.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(hub.Config)
	if err != nil {
		t.Fatal(err)
	}
	export := func(cluster, ts string) {
		t.Helper()
		u := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "broker.isthmus.dev/v1alpha1", "kind": "ExportedService",
			"metadata": map[string]any{"name": brokerv1.ExportedServiceName(cluster, "demo", "echo"), "labels": map[string]any{brokerv1.LabelSourceCluster: cluster}},
			"spec": map[string]any{"sourceCluster": cluster, "exportCreationTimestamp": ts, "serviceName": "echo", "serviceNamespace": "demo",
				"type": "ClusterSetIP", "ports": []any{map[string]any{"port": int64(80), "protocol": "TCP"}}},
		}}
		if _, err := dyn.Resource(brokerv1.ExportedServicesResource).Namespace(ns).Create(ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatalf("the hub refused %s's export at %q: %v", cluster, ts, err)
		}
	}
	export("a", "2026-12-01T00:00:00Z")
	export("b", "2020-01-01t00:00:00z") // the form of the H2 finding

	var mu sync.Mutex
	var reported []string
	inf := NewExportedServiceInformer(dyn, ns, 0, cache.Indexers{}, func(_ schema.GroupVersionResource, _, name string, err error) {
		mu.Lock()
		defer mu.Unlock()
		reported = append(reported, name)
		t.Logf("reported: %v", err)
	})
	go inf.Run(ctx.Done())
	sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
	defer scancel()
	if !cache.WaitForCacheSync(sctx.Done(), inf.HasSynced) {
		t.Fatal("the informer never synced")
	}
	o, ok, _ := inf.GetStore().GetByKey(ns + "/" + brokerv1.ExportedServiceName("b", "demo", "echo"))
	if !ok {
		t.Fatal("b's export is missing")
	}
	if got := o.(*brokerv1.ExportedService).Spec.ExportCreationTimestamp.Time; !got.Equal(time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("b's export time read as %v", got)
	}
	// A watch event in the odd form is read too.
	export("c", "2021-06-01t12:00:00.5z")
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, ok, _ := inf.GetStore().GetByKey(ns + "/" + brokerv1.ExportedServiceName("c", "demo", "echo")); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("c's export never arrived through the watch")
		}
		time.Sleep(50 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reported) != 0 {
		t.Errorf("records reported undecodable: %v", reported)
	}
	if n := len(inf.GetStore().ListKeys()); n != 3 {
		t.Errorf("%d records in the store; want 3", n)
	}
}

// TestUnreadableRecordIsLeftOutAndReported: an object no decoding reads is
// left out of the store and reported, and the others are there.
func TestUnreadableRecordIsLeftOutAndReported(t *testing.T) {
	obj := func(name, ts string) *unstructured.Unstructured {
		return &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "broker.isthmus.dev/v1alpha1", "kind": "ExportedService",
			"metadata": map[string]any{"name": name, "namespace": "isthmus-broker"},
			"spec":     map[string]any{"sourceCluster": name, "exportCreationTimestamp": ts, "serviceName": "echo", "serviceNamespace": "demo"},
		}}
	}
	scheme := runtime.NewScheme()
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(scheme,
		map[schema.GroupVersionResource]string{brokerv1.ExportedServicesResource: "ExportedServiceList"},
		obj("good", "2026-12-01T00:00:00Z"), obj("odd", "yesterday"))
	var mu sync.Mutex
	var reported []string
	inf := NewExportedServiceInformer(dyn, "isthmus-broker", 0, cache.Indexers{}, func(_ schema.GroupVersionResource, _, name string, _ error) {
		mu.Lock()
		defer mu.Unlock()
		reported = append(reported, name)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	go inf.Run(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		t.Fatal("the informer never synced")
	}
	if keys := inf.GetStore().ListKeys(); len(keys) != 1 || keys[0] != "isthmus-broker/good" {
		t.Errorf("store holds %v; want only the readable record", keys)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reported) != 1 || reported[0] != "odd" {
		t.Errorf("reported %v; want the unreadable record", reported)
	}
}

// FuzzDecode feeds records as another member could write them (any JSON
// object) to the decoder: it must never panic, and what it accepts must
// carry the timestamps it read in RFC 3339 form.
func FuzzDecode(f *testing.F) {
	for _, seed := range []string{
		`{"metadata":{"name":"b-demo-echo"},"spec":{"sourceCluster":"b","exportCreationTimestamp":"2020-01-01t00:00:00z"}}`,
		`{"spec":{"exportCreationTimestamp":"2020-01-01T00:00:00x5Z"}}`,
		`{"status":{"conditions":[{"type":"Ready","lastTransitionTime":"2026-12-06T01:00:00+01:00"}]}}`,
		`{"spec":{"exportCreationTimestamp":12}}`,
		`{"metadata":{"creationTimestamp":"9999-99-99T99:99:99Z"}}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var obj map[string]any
		if json.Unmarshal(data, &obj) != nil {
			return
		}
		u := &unstructured.Unstructured{Object: obj}
		var es brokerv1.ExportedService
		if Decode(u, &es) == nil && !es.Spec.ExportCreationTimestamp.IsZero() {
			if _, err := time.Parse(time.RFC3339, es.Spec.ExportCreationTimestamp.UTC().Format(time.RFC3339)); err != nil {
				t.Errorf("accepted a time that does not format back: %v", err)
			}
		}
		var c brokerv1.Cluster
		_ = Decode(u, &c)
	})
}
