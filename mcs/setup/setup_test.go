package setup

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/isthmus-dev/isthmus/test/cluster"
)

// The tests share one clusterset: a broker and two members, joined as
// cluster ids "alpha" and "beta".
var clusters *cluster.Clusterset

func TestMain(m *testing.M) {
	cluster.Main(m, cluster.Options{Broker: true, Members: 2}, &clusters)
}

const (
	alpha = "alpha"
	beta  = "beta"
)

// approved are the ranges join approves for each member; validCluster and
// memberSlice publish inside them.
var approved = map[string]struct{ pods, svcs, podIP string }{
	alpha: {"10.241.0.0/16", "10.97.0.0/16", "10.241.0.5"},
	beta:  {"10.242.0.0/16", "10.98.0.0/16", "10.242.0.5"},
}

var (
	joinOnce sync.Once
	joinErr  error
)

// joined installs the broker and joins both members once for all tests.
func joined(t *testing.T) (hub, a, b *Clients) {
	t.Helper()
	hub, a, b = clients(t, clusters.Broker), clients(t, clusters.Members[0]), clients(t, clusters.Members[1])
	joinOnce.Do(func() {
		ctx := context.Background()
		var out bytes.Buffer
		if joinErr = InstallBroker(ctx, hub, BrokerOptions{}, &out); joinErr != nil {
			return
		}
		if _, joinErr = Join(ctx, hub, a, JoinOptions{ClusterID: alpha,
			PodCIDRs: []string{approved[alpha].pods}, ServiceCIDRs: []string{approved[alpha].svcs}}, &out); joinErr != nil {
			return
		}
		_, joinErr = Join(ctx, hub, b, JoinOptions{ClusterID: beta,
			PodCIDRs: []string{approved[beta].pods}, ServiceCIDRs: []string{approved[beta].svcs},
			ExportNamespaces: []string{"demo"}}, &out)
		t.Logf("first install and joins:\n%s", out.String())
	})
	if joinErr != nil {
		t.Fatalf("installing the broker and joining the members: %v", joinErr)
	}
	return hub, a, b
}

func clients(t *testing.T, c *cluster.Cluster) *Clients {
	t.Helper()
	cs, err := NewClients(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// eventually retries check until it passes or a timeout; admission policies
// and RBAC take a moment to be enforced after they are written.
func eventually(t *testing.T, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// toUnstructured converts a typed object with TypeMeta set.
func toUnstructured(t *testing.T, obj runtime.Object) *unstructured.Unstructured {
	t.Helper()
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{Object: m}
	unstructured.RemoveNestedField(u.Object, "metadata", "creationTimestamp")
	unstructured.RemoveNestedField(u.Object, "status")
	return u
}

func wantErrContaining(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("succeeded, want an error containing %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Fatalf("error does not contain %q:\n%v", p, err)
		}
	}
}
