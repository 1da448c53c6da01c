package agent

import (
	"log/slog"
	"slices"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcslisters "sigs.k8s.io/mcs-api/pkg/client/listers/apis/v1beta1"

	brokerlisters "github.com/isthmus-dev/isthmus/mcs/api/broker/generated/listers/broker/v1alpha1"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

func slicesWith(ready ...bool) []*discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{AddressType: discoveryv1.AddressTypeIPv4}
	for _, r := range ready {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{"10.0.0.1"}, Conditions: discoveryv1.EndpointConditions{Ready: &r}})
	}
	return []*discoveryv1.EndpointSlice{s}
}

func TestChooseClusters(t *testing.T) {
	clusters := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	for id, region := range map[string]string{"a": "eu", "b": "us", "c": "eu", "d": "us"} {
		clusters.Add(&brokerv1.Cluster{ObjectMeta: metav1.ObjectMeta{Name: id, Namespace: "ns"}, Spec: brokerv1.ClusterSpec{ClusterID: id, Region: region}})
	}
	// a's tunnel reports d down; b's heartbeat is current (no Lease yet
	// counts as healthy), so only d is unreachable.
	clusters.Update(&brokerv1.Cluster{ObjectMeta: metav1.ObjectMeta{Name: "a", Namespace: "ns"}, Spec: brokerv1.ClusterSpec{ClusterID: "a", Region: "eu"},
		Status: brokerv1.ClusterStatus{Tunnel: &brokerv1.TunnelStatus{Peers: []brokerv1.TunnelPeerStatus{
			{Cluster: "b", State: brokerv1.TunnelPeerConnected}, {Cluster: "c", State: brokerv1.TunnelPeerConnecting}, {Cluster: "d", State: brokerv1.TunnelPeerError}}}}})
	a := &Agent{cfg: Config{ClusterID: "a", Region: "eu", BrokerNamespace: "ns"}, clusters: brokerlisters.NewClusterLister(clusters), leases: cache.NewStore(cache.MetaNamespaceKeyFunc)}
	tests := []struct {
		name      string
		byCluster map[string][]*discoveryv1.EndpointSlice
		policy    string
		want      []string
	}{
		{"local ready stays local", map[string][]*discoveryv1.EndpointSlice{"a": slicesWith(true), "b": slicesWith(true), "c": slicesWith(true)}, LocalityLocal, []string{"a"}},
		{"one ready local endpoint is enough", map[string][]*discoveryv1.EndpointSlice{"a": slicesWith(false, true), "c": slicesWith(true)}, LocalityLocal, []string{"a"}},
		{"none local: same region first", map[string][]*discoveryv1.EndpointSlice{"a": slicesWith(false), "b": slicesWith(true), "c": slicesWith(true)}, LocalityLocal, []string{"c"}},
		{"same region not ready: other regions, not the unreachable one", map[string][]*discoveryv1.EndpointSlice{"a": nil, "b": slicesWith(true), "c": slicesWith(false), "d": slicesWith(true)}, LocalityLocal, []string{"b"}},
		{"only the unreachable one is ready: keep it", map[string][]*discoveryv1.EndpointSlice{"a": nil, "b": slicesWith(false), "d": slicesWith(true)}, LocalityLocal, []string{"d"}},
		{"spread leaves the unreachable one out", map[string][]*discoveryv1.EndpointSlice{"a": slicesWith(true), "b": slicesWith(true), "d": slicesWith(true)}, LocalitySpread, []string{"a", "b"}},
		{"spread keeps it when nothing else is ready", map[string][]*discoveryv1.EndpointSlice{"a": slicesWith(false), "d": slicesWith(true)}, LocalitySpread, []string{"a", "d"}},
		{"no local export at all", map[string][]*discoveryv1.EndpointSlice{"b": slicesWith(true), "c": slicesWith(true)}, LocalityLocal, []string{"c"}},
		{"nothing ready anywhere: keep all", map[string][]*discoveryv1.EndpointSlice{"a": slicesWith(false), "b": slicesWith(false)}, LocalityLocal, []string{"a", "b"}},
		{"spread", map[string][]*discoveryv1.EndpointSlice{"a": slicesWith(true), "b": slicesWith(true)}, LocalitySpread, []string{"a", "b"}},
		{"remote-first", map[string][]*discoveryv1.EndpointSlice{"a": slicesWith(true), "b": slicesWith(true), "c": slicesWith(true)}, LocalityRemoteFirst, []string{"c"}},
		{"remote-first falls back to local", map[string][]*discoveryv1.EndpointSlice{"a": slicesWith(true), "b": slicesWith(false)}, LocalityRemoteFirst, []string{"a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The states as importInput gathers them, from the Leases and
			// the Cluster records.
			states := map[string]clusterState{}
			for c := range tt.byCluster {
				states[c] = a.clusterState(c)
			}
			if got := chooseClusters(tt.byCluster, tt.policy, "a", "eu", states); !slices.Equal(got, tt.want) {
				t.Errorf("chooseClusters = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestLocalityOf(t *testing.T) {
	exp := func(cluster, policy string) *brokerv1.ExportedService {
		e := &brokerv1.ExportedService{Spec: brokerv1.ExportedServiceSpec{SourceCluster: cluster}}
		if policy != "" {
			e.Annotations = map[string]string{brokerv1.AnnotationLocality: policy}
		}
		return e
	}
	for _, tt := range []struct {
		exports []*brokerv1.ExportedService
		want    string
	}{
		{[]*brokerv1.ExportedService{exp("a", "spread"), exp("b", "")}, LocalitySpread},
		{[]*brokerv1.ExportedService{exp("a", ""), exp("b", "spread")}, LocalityLocal}, // the winner's policy counts
		{[]*brokerv1.ExportedService{exp("a", "nonsense")}, LocalityLocal},
		{[]*brokerv1.ExportedService{exp("a", "remote-first")}, LocalityRemoteFirst},
	} {
		if got := localityOf(tt.exports, "a"); got != tt.want {
			t.Errorf("localityOf(%v) = %q, want %q", tt.exports[0].Annotations, got, tt.want)
		}
	}
}

// TestMassWithdrawalGuard: an empty broker view is not believed at once
// while this cluster holds several imports; it is after WithdrawAfter, and
// any export on the broker ends the suspicion.
func TestMassWithdrawalGuard(t *testing.T) {
	imports := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	exports := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{byService: serviceIndex})
	a := &Agent{cfg: Config{WithdrawAfter: time.Minute}, brokerExports: exports, serviceImports: mcslisters.NewServiceImportLister(imports)}

	imports.Add(&mcsv1beta1.ServiceImport{ObjectMeta: metav1.ObjectMeta{Name: "one", Namespace: "x"}})
	if a.brokerViewSuspect() {
		t.Error("one import: an empty broker is believed")
	}
	for _, n := range []string{"two", "three"} {
		imports.Add(&mcsv1beta1.ServiceImport{ObjectMeta: metav1.ObjectMeta{Name: n, Namespace: "x"}})
	}
	if !a.brokerViewSuspect() {
		t.Error("three imports and an empty broker: not suspected")
	}
	long := time.Now().Add(-2 * time.Minute)
	a.emptySince.Store(&long)
	if a.brokerViewSuspect() {
		t.Error("empty for longer than WithdrawAfter: still suspected")
	}
	exports.Add(&brokerv1.ExportedService{ObjectMeta: metav1.ObjectMeta{Name: "e", Namespace: "b"}})
	if a.brokerViewSuspect() || a.emptySince.Load() != nil {
		t.Error("an export on the broker: still suspected")
	}
}

func TestNames(t *testing.T) {
	if got := derivedServiceName("web"); len(got) != len("derived-")+10 || got != derivedServiceName("web") || got == derivedServiceName("api") {
		t.Errorf("derivedServiceName: %q", got)
	}
	long := string(make([]byte, 300))
	if n := brokerSliceName("a", "b", long); len(n) > 253 {
		t.Errorf("broker slice name of %d characters", len(n))
	}
	if importSliceName("web", "east", discoveryv1.AddressTypeIPv6) != "web-east-ipv6" {
		t.Error("importSliceName")
	}
}

// TestHealthFollowsEachLease: a peer is judged by its own Lease's duration
// (here 1 s, while this agent's is 30 s) from when this agent saw it
// renewed, and forgotten with its Lease.
func TestHealthFollowsEachLease(t *testing.T) {
	leases := cache.NewStore(cache.MetaNamespaceKeyFunc)
	a := &Agent{cfg: Config{ClusterID: "a", LeaseDuration: 30 * time.Second, WithdrawAfter: time.Minute},
		leases: leases, health: map[string]brokerv1.Health{}, log: slog.New(slog.DiscardHandler),
		brokerExports: cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{byService: serviceIndex}),
		clusters:      brokerlisters.NewClusterLister(cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc}))}
	a.heartbeats.Default = a.cfg.LeaseDuration
	a.link.Store(&brokerv1.BrokerLink{Up: true, Since: time.Now().Add(-time.Hour)})
	// A renewTime from the future: it buys nothing, this agent's clock
	// counts from when it saw the Lease.
	l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: brokerv1.LeaseName("b"), Namespace: "ns", Labels: map[string]string{brokerv1.LabelSourceCluster: "b"}},
		Spec: coordinationv1.LeaseSpec{RenewTime: &metav1.MicroTime{Time: time.Now().Add(time.Hour)}, LeaseDurationSeconds: new(int32(1))}}
	if err := leases.Add(l); err != nil {
		t.Fatal(err)
	}
	a.observeLease(l, false)
	if h := a.healthOf("b"); h != brokerv1.Healthy {
		t.Fatalf("just seen renewed: %v", h)
	}
	time.Sleep(1200 * time.Millisecond)
	if h := a.healthOf("b"); h != brokerv1.Lapsed || !a.unreachable("b") {
		t.Errorf("1.2 s after a 1 s Lease was seen renewed: %v, unreachable %v", h, a.unreachable("b"))
	}
	if h := a.healthOf("a"); h != brokerv1.Healthy {
		t.Errorf("this cluster to itself: %v", h)
	}
	a.observeLease(cache.DeletedFinalStateUnknown{Key: "ns/" + l.Name, Obj: l}, true)
	if h := a.healthOf("b"); h != brokerv1.Healthy {
		t.Errorf("after its Lease was deleted: %v", h)
	}
}
