package charts_test

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/isthmus-dev/isthmus/test/cluster"
	"github.com/isthmus-dev/isthmus/test/helmtest"
)

// The chart tests share one clusterset: a broker, for the broker chart,
// and one member, into which the member chart is applied. The member's
// Service range is 10.97.0.0/16.
var clusters *cluster.Clusterset

func TestMain(m *testing.M) {
	cluster.Main(m, cluster.Options{Broker: true, Members: 1}, &clusters)
}

const (
	memberChart  = "isthmus"
	brokerChart  = "isthmus-broker"
	chartRelease = "isthmus"
	// chartCluster is the clusterID the member chart is rendered for; the
	// RBAC table names its Lease (isthmus-tunnel-c).
	chartCluster = "c"
	// chartDNSIP is a fixed dns Service address in the member's Service
	// range, so the server-side dry-run accepts it.
	chartDNSIP = "10.97.0.53"
)

var (
	memberOnce sync.Once
	memberErr  error
)

// member is the member cluster, with the isthmus-system namespace the
// chart installs into (isthmusctl join makes it in a real cluster).
func member(t *testing.T) *cluster.Cluster {
	t.Helper()
	m := clusters.Members[0]
	memberOnce.Do(func() {
		_, err := m.Client.CoreV1().Namespaces().Create(context.Background(),
			&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "isthmus-system"}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			memberErr = err
		}
	})
	if memberErr != nil {
		t.Fatalf("making isthmus-system: %v", memberErr)
	}
	return m
}

func findHelm(t *testing.T) string { return helmtest.Find(t, "..") }

// renderChart runs helm template of the member chart with the values set.
func renderChart(t *testing.T, set ...string) []*unstructured.Unstructured {
	t.Helper()
	out, err := helmTemplate(t, set...)
	if err != nil {
		t.Fatalf("helm template %v: %v", set, err)
	}
	return decode(t, out)
}

func helmTemplate(t *testing.T, set ...string) ([]byte, error) {
	t.Helper()
	args := []string{"template", chartRelease, memberChart, "--namespace", "isthmus-system", "--kube-version", "1.37.2", "--set", "clusterID=" + chartCluster}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(findHelm(t), args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%w: %s", err, stderr.String())
	}
	return out, nil
}

func decode(t *testing.T, out []byte) []*unstructured.Unstructured {
	t.Helper()
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

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func ptrTo[T any](v T) *T { return &v }
