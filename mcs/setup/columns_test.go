package setup

import (
	"encoding/json"
	"testing"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// TestClusterColumnsShowHeartbeat asks the broker's apiserver for Cluster
// records as a Table, the request `kubectl get clusters` makes, and checks
// that the columns show the Heartbeat condition the members write (not a
// condition nothing writes), with its reason.
func TestClusterColumnsShowHeartbeat(t *testing.T) {
	hub, _, _ := joined(t)
	ctx := ctxFor(t)
	const id = "columns"
	res := hub.Dynamic.Resource(clusterGVR).Namespace(brokerv1.DefaultBrokerNamespace)
	created, err := res.Create(ctx, toUnstructured(t, validCluster(id)), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = res.Delete(ctxFor(t), id, metav1.DeleteOptions{}) })
	// The condition as a peer's agent writes it (mcs/agent/health.go).
	var conds []metav1.Condition
	meta.SetStatusCondition(&conds, metav1.Condition{Type: brokerv1.ClusterConditionHeartbeat, Status: metav1.ConditionFalse,
		Reason: brokerv1.ReasonLeaseExpired, Message: "lease lapsed", ObservedGeneration: created.GetGeneration()})
	var status []any
	data, _ := json.Marshal(conds)
	if err := json.Unmarshal(data, &status); err != nil {
		t.Fatal(err)
	}
	created.Object["status"] = map[string]any{"conditions": status, "tunnel": map[string]any{"implementation": "userspace"}}
	if _, err := res.UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	for _, wide := range []bool{false, true} {
		req := hub.Kube.Discovery().RESTClient().Get().
			AbsPath("/apis", brokerv1.GroupName, brokerv1.SchemeGroupVersion.Version, "namespaces", brokerv1.DefaultBrokerNamespace, "clusters", id).
			SetHeader("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
		raw, err := req.DoRaw(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var table metav1.Table
		if err := json.Unmarshal(raw, &table); err != nil {
			t.Fatal(err)
		}
		if len(table.Rows) != 1 {
			t.Fatalf("table has %d rows, want 1", len(table.Rows))
		}
		got := map[string]any{}
		for i, c := range table.ColumnDefinitions {
			// kubectl shows priority 0 columns, and the rest with -o wide.
			if c.Priority == 0 || wide {
				got[c.Name] = table.Rows[0].Cells[i]
			}
		}
		want := map[string]any{"Name": id, "Region": "eu", "Zone": "eu-1", "Heartbeat": "False", "Reason": brokerv1.ReasonLeaseExpired}
		if wide {
			want["Tunnel"] = "userspace"
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("wide=%v: column %s = %v, want %v (columns %v)", wide, k, got[k], v, got)
			}
		}
		if _, ok := got["Ready"]; ok {
			t.Error("a Ready column is back; nothing writes a Ready condition on Clusters")
		}
	}
}
