package setup

import (
	"context"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// TestMemberCredentials: a member admitted with MemberCredentials writes
// its own records with its own identity and is held to the same rules as
// a joined one; its id cannot be taken by another kube-system UID.
func TestMemberCredentials(t *testing.T) {
	hub, _, _ := joined(t)
	ctx := ctxFor(t)
	cfg, err := MemberCredentials(ctx, hub, JoinOptions{ClusterID: "gamma"}, "uid-gamma")
	if err != nil {
		t.Fatal(err)
	}
	gamma, err := NewClients(cfg)
	if err != nil {
		t.Fatal(err)
	}
	createOwnCluster(t, gamma, "gamma")
	res := gamma.Dynamic.Resource(clusterGVR).Namespace(brokerv1.DefaultBrokerNamespace)
	_, err = res.Create(context.Background(), toUnstructured(t, validCluster("delta")), metav1.CreateOptions{})
	wantDenied(t, err, "own-records-only")
	if _, err := MemberCredentials(ctx, hub, JoinOptions{ClusterID: "gamma"}, "uid-other"); err == nil {
		t.Error("another cluster took over gamma's id")
	}
	if _, err := MemberCredentials(ctx, hub, JoinOptions{ClusterID: "Not_A_Label"}, "uid"); err == nil {
		t.Error("an id that is not a DNS label was admitted")
	}
}
