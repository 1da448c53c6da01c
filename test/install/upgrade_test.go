package install

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	brokerclient "github.com/isthmus-dev/isthmus/mcs/api/broker/generated/clientset/versioned"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/test/cluster"
)

// TestUpgradeKeepsTraffic upgrades the member chart of both members to an
// image of the next version, then restarts every Isthmus pod, while a pod
// in member2 GETs member1's exported Service by its clusterset name every
// 50 ms on new connections and every 50 ms on one long-lived connection.
// Neither loop may see a failed request, nor either phase a broken
// connection (the long-lived loop opens its connection again only after
// an error on it); the tunnels keep their keys and the broker's records of
// the export are not rewritten. The longest request shows what each step
// cost the data path. It runs on the install TestInstallOnRealNodes
// checked, as a user upgrades the install they have.
func TestUpgradeKeepsTraffic(t *testing.T) {
	a, err := Build()
	if err != nil {
		t.Fatal(err)
	}
	next, nextTag, err := a.BuildUpgrade()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(filepath.Dir(next)) })
	s := sharedSet(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	m1, m2 := s.Members[0], s.Members[1]
	// The next version's image, imported into the running nodes as a
	// user's registry would offer it. Its archive also carries the chart's
	// default tag, which now names the next image; the pods running keep
	// the image they started from until the upgrade replaces them.
	for _, m := range s.Members {
		if err := m.ImportImage(ctx, next); err != nil {
			t.Fatal(err)
		}
	}

	// Its own namespace: the install test's Services stay in default.
	const ns = "upgrade"
	for _, m := range s.Members {
		if _, err := m.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	RunTestServer(ctx, t, m1, ns, "web")
	mc, err := mcsclient.NewForConfig(m1.Config)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mc.MulticlusterV1beta1().ServiceExports(ns).Create(ctx, &mcsv1beta1.ServiceExport{
		ObjectMeta: metav1.ObjectMeta{Name: "web"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	url := "http://web." + ns + ".svc.clusterset.local/"
	probe := RunTestServer(ctx, t, m2, ns, "probe")
	Eventually(ctx, t, m2, probe, func(out string) bool { return strings.HasPrefix(out, "200 ") }, "/testserver", "get", url)
	loader := RunTestServer(ctx, t, m2, ns, "load", "load", url)

	// The load runs clean before anything changes.
	var before loadCounters
	for {
		before = readLoad(ctx, t, m2, loader)
		if before.NewConnections.Requests >= 20 && before.LongLived.Requests >= 20 {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if before.NewConnections.Failures > 0 || before.LongLived.Failures > 0 {
		t.Fatalf("the load failed before any change: %+v", before)
	}
	records := brokerState(ctx, t, s)

	upgrade := func(m *cluster.Cluster) {
		t.Helper()
		began := time.Now()
		if err := s.run(ctx, a.Helm, "--kubeconfig", s.Kubeconfig, "--kube-context", m.Name, "upgrade", "isthmus",
			filepath.Join(a.Root, "charts", "isthmus"), "-n", Namespace, "--reuse-values", "--set", "image.tag="+nextTag); err != nil {
			t.Fatal(err)
		}
		waitRolled(ctx, t, m, func(p corev1.Pod) bool { return strings.HasSuffix(p.Spec.Containers[0].Image, ":"+nextTag) })
		t.Logf("%s: helm upgrade to %s, every pod replaced and Ready in %v", m.Name, nextTag, time.Since(began).Round(time.Millisecond))
	}
	restart := func(m *cluster.Cluster) {
		t.Helper()
		began := time.Now()
		at := time.Now().UTC().Format(time.RFC3339)
		patch := []byte(`{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":"` + at + `"}}}}}`)
		deps, err := m.Client.AppsV1().Deployments(Namespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range deps.Items {
			if _, err := m.Client.AppsV1().Deployments(Namespace).Patch(ctx, d.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		dss, err := m.Client.AppsV1().DaemonSets(Namespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range dss.Items {
			if _, err := m.Client.AppsV1().DaemonSets(Namespace).Patch(ctx, d.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		waitRolled(ctx, t, m, func(p corev1.Pod) bool { return p.Annotations["kubectl.kubernetes.io/restartedAt"] == at })
		t.Logf("%s: rolling restart of every Isthmus pod done in %v", m.Name, time.Since(began).Round(time.Millisecond))
	}
	check := func(what string, from loadCounters) loadCounters {
		t.Helper()
		// Let requests in flight during the last rollout finish.
		time.Sleep(2 * time.Second)
		now := readLoad(ctx, t, m2, loader)
		fresh, kept := now.NewConnections.minus(from.NewConnections), now.LongLived.minus(from.LongLived)
		t.Logf("%s: new connections: %d requests, %d failed, longest %d ms; long-lived connection: %d requests, %d failed, longest %d ms, %d reconnects",
			what, fresh.Requests, fresh.Failures, now.NewConnections.MaxMillis, kept.Requests, kept.Failures, now.LongLived.MaxMillis, kept.Connections)
		if fresh.Failures > 0 || kept.Failures > 0 {
			t.Errorf("%s: failed requests: %v %v", what, now.NewConnections.Errors, now.LongLived.Errors)
			for _, m := range s.Members {
				t.Logf("%s: tunnel pods now:\n%s", m.Name, tunnelLogs(ctx, m))
			}
		}
		if kept.Connections > 0 {
			t.Errorf("%s: the long-lived connection broke and was opened again %d times; its last errors: %q", what, kept.Connections, now.LongLived.Errors)
		}
		if fresh.Requests < 10 || kept.Requests < 10 {
			t.Errorf("%s: the load stalled: %d and %d requests", what, fresh.Requests, kept.Requests)
		}
		return now
	}

	upgrade(m2)
	upgrade(m1)
	after := check("helm upgrade of both members", before)
	restart(m2)
	restart(m1)
	check("rolling restart of both members", after)

	if got := brokerState(ctx, t, s); got.String() != records.String() {
		t.Errorf("the broker's records churned:\nbefore %s\nafter  %s", records, got)
	}
}

// loadCounters are testserver load's /stats.
type loadCounters struct {
	NewConnections loadCounter `json:"newConnections"`
	LongLived      loadCounter `json:"longLived"`
}

type loadCounter struct {
	Requests, Failures, MaxMillis, Connections int64
	Errors                                     []string
}

// minus is what happened between from and c (MaxMillis stays c's).
func (c loadCounter) minus(from loadCounter) loadCounter {
	c.Requests -= from.Requests
	c.Failures -= from.Failures
	c.Connections -= from.Connections
	return c
}

func readLoad(ctx context.Context, t *testing.T, m *cluster.Cluster, pod corev1.Pod) loadCounters {
	t.Helper()
	out := Eventually(ctx, t, m, pod, func(out string) bool { return strings.HasPrefix(out, "200 {") },
		"/testserver", "get", "http://127.0.0.1:8080/stats")
	var c loadCounters
	if err := json.Unmarshal([]byte(strings.TrimPrefix(out, "200 ")), &c); err != nil {
		t.Fatalf("load stats %q: %v", out, err)
	}
	return c
}

// recordState is what must not churn on the broker: each export's
// record and slices (by resourceVersion) and each tunnel's public key.
type recordState map[string]string

func (r recordState) String() string {
	b, _ := json.Marshal(r)
	return string(b)
}

func brokerState(ctx context.Context, t *testing.T, s *Set) recordState {
	t.Helper()
	bc, err := brokerclient.NewForConfig(s.Broker.Config)
	if err != nil {
		t.Fatal(err)
	}
	state := recordState{}
	exports, err := bc.BrokerV1alpha1().ExportedServices(brokerv1.DefaultBrokerNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range exports.Items {
		state["export/"+e.Name] = e.ResourceVersion
	}
	slices, err := s.Broker.Client.DiscoveryV1().EndpointSlices(brokerv1.DefaultBrokerNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, sl := range slices.Items {
		state["slice/"+sl.Name] = sl.ResourceVersion
	}
	clusters, err := bc.BrokerV1alpha1().Clusters(brokerv1.DefaultBrokerNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range clusters.Items {
		key := ""
		if c.Spec.WireGuard != nil {
			key = c.Spec.WireGuard.PublicKey
		}
		state["tunnel-key/"+c.Name] = key
	}
	if len(exports.Items) == 0 || len(slices.Items) == 0 {
		t.Fatalf("the broker has no export records: %v", state)
	}
	return state
}

// waitRolled waits until every pod of the chart is new (isNew) and every
// Deployment and DaemonSet is Ready.
func waitRolled(ctx context.Context, t *testing.T, m *cluster.Cluster, isNew func(corev1.Pod) bool) {
	t.Helper()
	var last string
	for {
		pods, err := m.Client.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{})
		if err == nil {
			old := 0
			for _, p := range pods.Items {
				if !isNew(p) {
					old++
				}
			}
			last = fmt.Sprintf("%d of %d pods not yet replaced", old, len(pods.Items))
			if old == 0 {
				if last = notReady(ctx, m); last == "" {
					return
				}
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: rollout: %s", m.Name, last)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// tunnelLogs are the lines of the tunnel pods' logs that tell a handover.
func tunnelLogs(ctx context.Context, m *cluster.Cluster) string {
	pods, err := m.Client.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=tunnel"})
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, p := range pods.Items {
		logs, err := m.Client.CoreV1().Pods(Namespace).GetLogs(p.Name, &corev1.PodLogOptions{}).DoRaw(ctx)
		if err != nil {
			fmt.Fprintf(&b, "%s: %v\n", p.Name, err)
			continue
		}
		for _, line := range strings.Split(string(logs), "\n") {
			for _, key := range []string{"lease", "leading", "attached", "kept", "device up", "reconciled", "stopped", "error", "WARN"} {
				if strings.Contains(line, key) {
					fmt.Fprintf(&b, "%s: %s\n", p.Name, line)
					break
				}
			}
		}
	}
	return b.String()
}
