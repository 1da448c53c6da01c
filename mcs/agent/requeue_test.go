package agent_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	brokerclient "github.com/isthmus-dev/isthmus/mcs/api/broker/generated/clientset/versioned"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// reconciles is how many times agent i's import controller has synced a
// key.
func reconciles(t *testing.T, i int) uint64 {
	t.Helper()
	agentsMu.Lock()
	reg := agents[i].reg
	agentsMu.Unlock()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, f := range families {
		if f.GetName() != "isthmus_agent_reconcile_seconds" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "controller" && l.GetValue() == "import" {
					n += m.GetHistogram().GetSampleCount()
				}
			}
		}
	}
	return n
}

// importsIdle waits until agent i's import controller has run no
// reconcile for 2 s, and returns its count of them.
func importsIdle(t *testing.T, i int) uint64 {
	t.Helper()
	var n uint64
	eventually(t, propagation, fmt.Sprintf("%s's import controller idle", ids[i]), func() error {
		before := reconciles(t, i)
		time.Sleep(2 * time.Second)
		if n = reconciles(t, i); n != before {
			return fmt.Errorf("%d reconciles in 2 s", n-before)
		}
		return nil
	})
	return n
}

// TestStatusWritesDoNotRequeueImports writes c's Cluster record's tunnel
// status ten times, as c's tunnel role does when its probes report, with
// nothing an import reads changing: c's agent reconciles no import. The
// write after them marks one peer's tunnel down, which must requeue the
// imports that peer exports, and only those: a peer "z" whose one export
// is the test's service, written on the broker with the hub's own
// credentials. Before, each of the ten writes requeued every import.
func TestStatusWritesDoNotRequeueImports(t *testing.T) {
	clusterset(t)
	ctx := ctxFor(t, 2*time.Minute)
	ns := "requeue"
	namespace(t, ctx, ns, 0, 1, 2)
	workload(t, ctx, 0, ns, "quiet", 1, false)
	exportService(t, ctx, 0, ns, "quiet", nil, nil)

	hub := brokerclient.NewForConfigOrDie(clusters.Broker.Config).BrokerV1alpha1()
	bns := brokerv1.DefaultBrokerNamespace
	z, err := hub.Clusters(bns).Create(ctx, &brokerv1.Cluster{
		ObjectMeta: metav1.ObjectMeta{Name: "z", Labels: map[string]string{brokerv1.LabelSourceCluster: "z"}},
		Spec:       brokerv1.ClusterSpec{ClusterID: "z", Region: "eu"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		_ = hub.ExportedServices(bns).Delete(ctx, brokerv1.ExportedServiceName("z", ns, "quiet"), metav1.DeleteOptions{})
		_ = hub.Clusters(bns).Delete(ctx, "z", metav1.DeleteOptions{})
	})
	if _, err := hub.ExportedServices(bns).Create(ctx, &brokerv1.ExportedService{
		ObjectMeta: metav1.ObjectMeta{Name: brokerv1.ExportedServiceName("z", ns, "quiet"), Labels: map[string]string{
			brokerv1.LabelSourceCluster: "z", brokerv1.LabelServiceName: "quiet", brokerv1.LabelServiceNamespace: ns}},
		Spec: brokerv1.ExportedServiceSpec{SourceCluster: "z", ServiceNamespace: ns, ServiceName: "quiet", Type: brokerv1.ClusterSetIP,
			Ports:                   []brokerv1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}},
			ExportCreationTimestamp: metav1.NewTime(z.CreationTimestamp.Add(time.Second))},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, propagation, "a and z imported in c", func() error {
		v, err := viewImport(ctx, t, 2, ns, "quiet")
		if err != nil {
			return err
		}
		if got := statusClusters(v.si); !slices.Equal(got, []string{"a", "z"}) {
			return fmt.Errorf("clusters %v", got)
		}
		return nil
	})
	// Let the writes that import caused come back through the informers.
	before := importsIdle(t, 2)

	status := func(zState brokerv1.TunnelPeerState, msg string) {
		t.Helper()
		rec, err := hub.Clusters(bns).Get(ctx, "c", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		rec.Status.Tunnel = &brokerv1.TunnelStatus{Implementation: "userspace", Peers: []brokerv1.TunnelPeerStatus{
			{Cluster: "a", State: brokerv1.TunnelPeerConnected, Message: msg},
			{Cluster: "b", State: brokerv1.TunnelPeerConnected, Message: msg},
			{Cluster: "z", State: zState, Message: msg}}}
		if _, err := hub.Clusters(bns).UpdateStatus(ctx, rec, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 10 {
		status(brokerv1.TunnelPeerConnected, fmt.Sprintf("latest handshake %d s ago", i))
	}
	status(brokerv1.TunnelPeerError, "3 probes lost")
	t.Cleanup(func() { status(brokerv1.TunnelPeerConnected, "") })
	eventually(t, propagation, "z's tunnel going down reconciles its import in c", func() error {
		if n := reconciles(t, 2); n == before {
			return fmt.Errorf("no reconcile yet")
		}
		return nil
	})
	// The one key z exports, and the writes its reconcile may cause coming
	// back; the ten status writes would each have added every import.
	always(t, 3*time.Second, "c reconciled only z's import", func() error {
		if n := reconciles(t, 2) - before; n > 3 {
			return fmt.Errorf("%d import reconciles after 10 status writes and one tunnel change", n)
		}
		return nil
	})
}

// TestOwnWritesQueueNothing exports five selector-less Services from a
// (nothing else changes their inputs) and counts c's import reconciles
// until every import is complete: each new import needs one, and a second
// only when the record's slice event lands while the first runs. The
// events of the agent's own writes (the ServiceImport, its IPs and status,
// the derived Service, the MCS slices) queue nothing; when they did, c ran
// about three reconciles per export, some of them writing again from a
// cache that had not yet shown the first write.
func TestOwnWritesQueueNothing(t *testing.T) {
	clusterset(t)
	ctx := ctxFor(t, 2*time.Minute)
	ns := "ownwrites"
	namespace(t, ctx, ns, 0, 1, 2)
	before := importsIdle(t, 2)
	const exports = 5
	for i := range exports {
		name := fmt.Sprintf("own-%d", i)
		if _, err := clusters.Members[0].Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		exportService(t, ctx, 0, ns, name, nil, nil)
	}
	for i := range exports {
		name := fmt.Sprintf("own-%d", i)
		eventually(t, propagation, name+" imported in c", func() error {
			v, err := viewImport(ctx, t, 2, ns, name)
			if err != nil {
				return err
			}
			if len(v.si.Spec.IPs) == 0 || !meta.IsStatusConditionTrue(v.si.Status.Conditions, string(mcsv1beta1.ServiceImportConditionReady)) {
				return fmt.Errorf("not complete yet: IPs %v, conditions %+v", v.si.Spec.IPs, v.si.Status.Conditions)
			}
			return nil
		})
	}
	if n := importsIdle(t, 2) - before; n > 2*exports {
		t.Errorf("c reconciled imports %d times for %d new exports, want at most %d", n, exports, 2*exports)
	} else {
		t.Logf("c reconciled imports %d times for %d new exports", n, exports)
	}
}

// TestOwnDeletesQueueNothing puts a stray slice among c's slices of an
// import, as a person or a broken controller might: its event queues the
// import, whose reconcile deletes it. That deletion is c's own, and its
// event brings nothing the reconcile did not have: one reconcile in all,
// where c ran a second for every slice it deleted before (at 1,000
// clusters, a dead member's withdrawal then cost every import twice).
func TestOwnDeletesQueueNothing(t *testing.T) {
	clusterset(t)
	ctx := ctxFor(t, 2*time.Minute)
	ns := "owndeletes"
	namespace(t, ctx, ns, 0, 1, 2)
	if _, err := clusters.Members[0].Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	exportService(t, ctx, 0, ns, "web", nil, nil)
	eventually(t, propagation, "web imported in c", func() error {
		_, err := viewImport(ctx, t, 2, ns, "web")
		return err
	})
	before := importsIdle(t, 2)
	eps := clusters.Members[2].Client.DiscoveryV1().EndpointSlices(ns)
	if _, err := eps.Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "web-stray", Labels: map[string]string{
			brokerv1.LabelManagedBy: brokerv1.ManagedBy, mcsv1beta1.LabelServiceName: "web", mcsv1beta1.LabelSourceCluster: "nowhere"}},
		AddressType: discoveryv1.AddressTypeIPv4,
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, propagation, "the stray slice deleted by c's agent", func() error {
		if _, err := eps.Get(ctx, "web-stray", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("still there (%v)", err)
		}
		return nil
	})
	if n := importsIdle(t, 2) - before; n != 1 {
		t.Errorf("c reconciled the import %d times for one stray slice, want 1 (the deletion's own event queued another)", n)
	}
}

// TestOwnBrokerSlicesQueueNoImport changes the endpoints of a service a
// exports. a's import of its own export reads a's local slices, never
// their broker copies, so the copy a's export writes must not queue a's
// import again: one import reconcile per change. Before, the copy's event
// ran a second one, which often found its cache without the first one's
// slice writes and wrote them again into a conflict.
func TestOwnBrokerSlicesQueueNoImport(t *testing.T) {
	clusterset(t)
	ctx := ctxFor(t, 2*time.Minute)
	ns := "ownbroker"
	namespace(t, ctx, ns, 0)
	a := clusters.Members[0].Client
	if _, err := a.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "direct"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	base := clusters.Members[0].PodCIDR.Addr()
	addr := func(n int) string {
		a := base
		for range n {
			a = a.Next()
		}
		return a.String()
	}
	port, pname, ready := int32(8080), "http", true
	slice, err := a.DiscoveryV1().EndpointSlices(ns).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "direct-1", Labels: map[string]string{
			discoveryv1.LabelServiceName: "direct", discoveryv1.LabelManagedBy: "test.isthmus.dev"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{addr(10)}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
		Ports:       []discoveryv1.EndpointPort{{Name: &pname, Port: &port}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	exportService(t, ctx, 0, ns, "direct", nil, nil)
	imported := func(want string) func() error {
		return func() error {
			v, err := viewImport(ctx, t, 0, ns, "direct")
			if err != nil {
				return err
			}
			if got := v.endpoints[ids[0]]; !slices.Equal(got, []string{want}) {
				return fmt.Errorf("a's own import lists %v, want [%s]", got, want)
			}
			hub, err := clusters.Broker.Client.DiscoveryV1().EndpointSlices(brokerv1.DefaultBrokerNamespace).List(ctx, metav1.ListOptions{
				LabelSelector: brokerv1.LabelSourceCluster + "=" + ids[0] + "," + brokerv1.LabelServiceName + "=direct"})
			if err != nil {
				return err
			}
			if len(hub.Items) != 1 || len(hub.Items[0].Endpoints) != 1 || hub.Items[0].Endpoints[0].Addresses[0] != want {
				return fmt.Errorf("the broker holds %d copies of a's slice, not one listing %s", len(hub.Items), want)
			}
			return nil
		}
	}
	eventually(t, propagation, "direct imported in a and published", imported(addr(10)))
	for i := 11; i <= 13; i++ {
		before := importsIdle(t, 0)
		slice.Endpoints[0].Addresses = []string{addr(i)}
		if slice, err = a.DiscoveryV1().EndpointSlices(ns).Update(ctx, slice, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, propagation, "the new address imported in a and published", imported(addr(i)))
		if n := importsIdle(t, 0) - before; n != 1 {
			t.Errorf("a reconciled its import %d times for one change of its endpoints, want 1 (the broker copy of its own slice queued it again)", n)
		}
	}
}
