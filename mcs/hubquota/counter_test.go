package hubquota

import (
	"context"

	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	metadatafake "k8s.io/client-go/metadata/fake"

	brokerfake "github.com/isthmus-dev/isthmus/mcs/api/broker/generated/clientset/versioned/fake"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

const ns = "isthmus-broker"

func record(k Kind, name, member string) *metav1.PartialObjectMetadata {
	tm := metav1.TypeMeta{APIVersion: brokerv1.SchemeGroupVersion.String(), Kind: "ExportedService"}
	if k == EndpointSlices {
		tm = metav1.TypeMeta{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice"}
	}
	m := &metav1.PartialObjectMetadata{TypeMeta: tm, ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
	if member != "" {
		m.Labels = map[string]string{brokerv1.LabelSourceCluster: member}
	}
	return m
}

// TestCounterWritesCounts runs the counter on fake clients: after the
// first list it writes each member's counts (a record with no member's
// label counts for no one), a delete is written after the debounce, a
// member without a MemberPolicy gets no write, and the gauge follows.
func TestCounterWritesCounts(t *testing.T) {
	scheme := runtime.NewScheme()
	if err := metav1.AddMetaToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	md := metadatafake.NewSimpleMetadataClient(scheme,
		record(Exports, "a-1", "a"), record(Exports, "a-2", "a"), record(Exports, "b-1", "b"),
		record(Exports, "nobody", ""), record(Exports, "c-1", "c"), record(EndpointSlices, "a-1-x", "a"))
	policy := func(name string) *brokerv1.MemberPolicy {
		return &brokerv1.MemberPolicy{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
	}
	broker := brokerfake.NewSimpleClientset(policy("a"), policy("b"))
	reg := prometheus.NewRegistry()
	c, err := New(Config{Metadata: md, Broker: broker, Namespace: ns, Debounce: 10 * time.Millisecond,
		Log: slog.New(slog.DiscardHandler), Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	status := func(member string) brokerv1.MemberPolicyStatus {
		mp, err := broker.BrokerV1alpha1().MemberPolicies(ns).Get(ctx, member, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return mp.Status
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !ok(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: a %+v, b %+v", what, status("a"), status("b"))
			}
		}
	}
	waitFor("the first counts", func() bool {
		a, b := status("a"), status("b")
		return a.ObservedTime != nil && a.Exports == 2 && a.EndpointSlices == 1 && b.ObservedTime != nil && b.Exports == 1 && b.EndpointSlices == 0
	})
	if err := c.Ready(); err != nil {
		t.Errorf("ready after the first list: %v", err)
	}
	if _, err := broker.BrokerV1alpha1().MemberPolicies(ns).Get(ctx, "c", metav1.GetOptions{}); err == nil {
		t.Error("a MemberPolicy was made for c, which has none")
	}
	for _, tt := range []struct {
		member string
		kind   Kind
		want   float64
	}{{"a", Exports, 2}, {"a", EndpointSlices, 1}, {"b", Exports, 1}, {"c", Exports, 1}} {
		if got := testutil.ToFloat64(c.records.WithLabelValues(tt.member, tt.kind.String())); got != tt.want {
			t.Errorf("isthmus_hub_member_records{member=%s,kind=%s} = %v, want %v", tt.member, tt.kind, got, tt.want)
		}
	}

	if err := md.Resource(resources[Exports]).Namespace(ns).Delete(ctx, "a-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("a's delete to be counted", func() bool { return status("a").Exports == 1 })
	if err := md.Resource(resources[EndpointSlices]).Namespace(ns).Delete(ctx, "a-1-x", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("a's last slice to be uncounted", func() bool { return status("a").EndpointSlices == 0 })
	if n := testutil.CollectAndCount(c.records, "isthmus_hub_member_records"); n != 3 {
		t.Errorf("%d series, want 3 (a's slices gone at zero)", n)
	}
}
