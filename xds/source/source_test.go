package source

import (
	"context"
	"k8s.io/client-go/dynamic"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	brokerclient "github.com/isthmus-dev/isthmus/mcs/api/broker/generated/clientset/versioned"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/api/crds"
	"github.com/isthmus-dev/isthmus/test/cluster"
	"github.com/isthmus-dev/isthmus/xds/model"
)

// TestSourceOnRealAPIServers writes what the agents write (a
// ServiceImport with its egress ports, MCS slices of two clusters, Cluster
// records, Leases, the tunnel's peer status) to real apiservers and checks
// the model the xDS server is fed, and that a stopped Lease or a dead
// tunnel makes a cluster unhealthy.
func TestSourceOnRealAPIServers(t *testing.T) {
	cs := cluster.Start(t, cluster.Options{Members: 1, Broker: true})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m, b := cs.Members[0], cs.Broker
	install := func(c *cluster.Cluster, get func() ([]*apiextensionsv1.CustomResourceDefinition, error)) {
		list, err := get()
		if err != nil {
			t.Fatal(err)
		}
		if err := c.InstallCRDs(ctx, list); err != nil {
			t.Fatal(err)
		}
	}
	install(m, crds.Member)
	install(b, crds.Broker)
	kube := kubernetes.NewForConfigOrDie(m.Config)
	mcs := mcsclient.NewForConfigOrDie(m.Config)
	broker := kubernetes.NewForConfigOrDie(b.Config)
	brokerAPI := brokerclient.NewForConfigOrDie(b.Config)
	const ns = brokerv1.DefaultBrokerNamespace
	for _, c := range []kubernetes.Interface{kube, broker} {
		for _, n := range []string{"demo", ns} {
			if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	record := func(id, region, gw string) {
		c := &brokerv1.Cluster{
			ObjectMeta: metav1.ObjectMeta{Name: id, Namespace: ns, Labels: map[string]string{brokerv1.LabelSourceCluster: id}},
			Spec:       brokerv1.ClusterSpec{ClusterID: id, Region: region, Gateways: []brokerv1.GatewayAddress{{Address: gw, Port: 15443}}},
		}
		if _, err := brokerAPI.BrokerV1alpha1().Clusters(ns).Create(ctx, c, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	record("a", "eu", "192.0.2.1")
	record("b", "us", "192.0.2.2")
	renew := func(id string) {
		l := &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: brokerv1.LeaseName(id), Namespace: ns, Labels: map[string]string{brokerv1.LabelSourceCluster: id}},
			Spec:       coordinationv1.LeaseSpec{HolderIdentity: ptr.To(id), LeaseDurationSeconds: ptr.To[int32](2), RenewTime: &metav1.MicroTime{Time: time.Now()}},
		}
		cur, err := broker.CoordinationV1().Leases(ns).Get(ctx, l.Name, metav1.GetOptions{})
		if err == nil {
			l.ResourceVersion = cur.ResourceVersion
			_, err = broker.CoordinationV1().Leases(ns).Update(ctx, l, metav1.UpdateOptions{})
		} else {
			_, err = broker.CoordinationV1().Leases(ns).Create(ctx, l, metav1.CreateOptions{})
		}
		if err != nil {
			t.Error(err)
		}
	}
	renew("a")
	renew("b")

	si := &mcsv1beta1.ServiceImport{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: "demo", Annotations: map[string]string{
			brokerv1.AnnotationEgressPorts: "TCP/80=16000", AnnotationUpstreamTLS: "mtls",
		}},
		Spec: mcsv1beta1.ServiceImportSpec{Type: mcsv1beta1.ClusterSetIP, Ports: []mcsv1beta1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}}},
	}
	si, err := mcs.MulticlusterV1beta1().ServiceImports("demo").Create(ctx, si, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	si.Status.Clusters = []mcsv1beta1.ClusterStatus{{Cluster: "a"}, {Cluster: "b"}}
	if _, err := mcs.MulticlusterV1beta1().ServiceImports("demo").UpdateStatus(ctx, si, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	slice := func(cluster, ip string, ready bool) {
		sl := &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Name: "echo-" + cluster, Namespace: "demo", Labels: map[string]string{
				mcsv1beta1.LabelServiceName: "echo", mcsv1beta1.LabelSourceCluster: cluster, brokerv1.LabelManagedBy: brokerv1.ManagedBy,
			}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(ready)}}},
		}
		cur, err := kube.DiscoveryV1().EndpointSlices("demo").Get(ctx, sl.Name, metav1.GetOptions{})
		if err == nil {
			sl.ResourceVersion = cur.ResourceVersion
			_, err = kube.DiscoveryV1().EndpointSlices("demo").Update(ctx, sl, metav1.UpdateOptions{})
		} else {
			_, err = kube.DiscoveryV1().EndpointSlices("demo").Create(ctx, sl, metav1.CreateOptions{})
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	slice("a", "10.240.0.10", true)
	slice("b", "10.241.0.10", true)

	var mu sync.Mutex
	var changes []Change
	src := New(Config{
		Local: model.Local{ClusterID: "a", Region: "eu"}, Kube: kube, MCS: mcs, Broker: broker, BrokerRecords: dynamic.NewForConfigOrDie(b.Config),
		BrokerNamespace: ns, LeaseDuration: 30 * time.Second, ProbeEvery: 500 * time.Millisecond, Log: slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	}, func(c Change) { mu.Lock(); changes = append(changes, c); mu.Unlock() })
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	echo := model.Key{Namespace: "demo", Name: "echo"}
	seen := func(k model.Key) bool {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range changes {
			if slices.Contains(c.Services, k) {
				return true
			}
		}
		return false
	}
	waitFor(t, "the first change naming echo", func() bool { return src.Ready() == nil && seen(echo) })

	s := src.Service(echo)
	if s == nil || s.Type != model.ClusterSetIP || !s.MTLS || len(s.Ports) != 1 || s.Ports[0].Egress != 16000 || s.Ports[0].Name != "http" {
		t.Fatalf("model of echo: %+v", s)
	}
	if got := s.Endpoints["b"]; len(got) != 1 || got[0].Address != netip.MustParseAddr("10.241.0.10") || got[0].Ports["http"] != 8080 || !got[0].Ready {
		t.Fatalf("b's endpoints: %+v", got)
	}
	cl := src.Clusters()
	if c := cl["b"]; c == nil || c.Region != "us" || !c.Healthy || len(c.Gateways) != 1 || c.Gateways[0] != netip.MustParseAddrPort("192.0.2.2:15443") {
		t.Fatalf("cluster b: %+v", c)
	}

	// A tenant of the namespace forges one of b's endpoints with the MCS
	// labels but without the agent's managed-by. Written before the change
	// below, it is seen first; b must still have exactly its one endpoint.
	forged := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "echo-forged", Namespace: "demo", Labels: map[string]string{
			mcsv1beta1.LabelServiceName: "echo", mcsv1beta1.LabelSourceCluster: "b",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.241.0.99"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
	}
	if _, err := kube.DiscoveryV1().EndpointSlices("demo").Create(ctx, forged, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// An endpoint change names echo again.
	mu.Lock()
	changes = nil
	mu.Unlock()
	slice("b", "10.241.0.10", false)
	waitFor(t, "b's endpoint not ready", func() bool {
		s := src.Service(echo)
		return seen(echo) && s != nil && len(s.Endpoints["b"]) == 1 && !s.Endpoints["b"][0].Ready
	})

	// b stops renewing its 2 s Lease while a keeps renewing: b turns
	// unhealthy on its own, without another event.
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(500 * time.Millisecond):
				renew("a")
			}
		}
	}()
	waitFor(t, "b unhealthy after its Lease lapsed", func() bool { c := src.Clusters()["b"]; return c != nil && !c.Healthy && c.Reason == "LeaseExpired" })
	renew("b")
	waitFor(t, "b healthy again after it renewed", func() bool { c := src.Clusters()["b"]; return c != nil && c.Healthy })
	close(stop)

	// The local tunnel reports b down: b is unhealthy.
	rec, err := brokerAPI.BrokerV1alpha1().Clusters(ns).Get(ctx, "a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rec.Status.Tunnel = &brokerv1.TunnelStatus{Peers: []brokerv1.TunnelPeerStatus{{Cluster: "b", State: brokerv1.TunnelPeerError, Message: "no handshake"}}}
	if _, err := brokerAPI.BrokerV1alpha1().Clusters(ns).UpdateStatus(ctx, rec, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	renew("b")
	waitFor(t, "b unhealthy while the tunnel to it is down", func() bool { c := src.Clusters()["b"]; return c != nil && !c.Healthy && c.Reason == "TunnelError" })

	// Unimport: the model forgets it.
	if err := mcs.MulticlusterV1beta1().ServiceImports("demo").Delete(ctx, "echo", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "echo gone", func() bool { return src.Service(echo) == nil })

	// The gateway Service's pods, ready or not, are the only gateway peers;
	// another Service's are not.
	gw := NewGatewayPods(kube, ns, "isthmus-gateway")
	gwDone := make(chan error, 1)
	go func() { gwDone <- gw.Run(ctx) }()
	waitFor(t, "gateway pods listed", func() bool { return gw.Ready() == nil })
	pod, other := netip.MustParseAddr("10.241.0.7"), netip.MustParseAddr("10.241.0.8")
	if gw.Has(pod) {
		t.Errorf("%s is a gateway pod before any slice lists it", pod)
	}
	for svc, ip := range map[string]netip.Addr{"isthmus-gateway": pod, "not-the-gateway": other} {
		if _, err := kube.DiscoveryV1().EndpointSlices(ns).Create(ctx, &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: svc + "-x", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{ip.String()}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false)}}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the gateway's pod listed", func() bool { return gw.Has(pod) })
	if gw.Has(other) {
		t.Errorf("another Service's pod %s counts as a gateway pod", other)
	}
	if err := kube.DiscoveryV1().EndpointSlices(ns).Delete(ctx, "isthmus-gateway-x", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the gone pod no longer a gateway", func() bool { return !gw.Has(pod) })
	cancel()
	if err := <-done; err != nil {
		t.Error(err)
	}
	if err := <-gwDone; err != nil {
		t.Error(err)
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }
