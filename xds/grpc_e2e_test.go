package xds

import (
	"testing"
	"time"

	"github.com/isthmus-dev/isthmus/xds/model"
)

var echoKey = model.Key{Namespace: "demo", Name: "echo"}

// threeClusters: a (local) and c in eu, b in us, all healthy.
func threeClusters(mode model.Mode) (model.Local, map[string]*model.Cluster) {
	local := model.Local{ClusterID: "a", Region: "eu", ClustersetDomain: "clusterset.isthmus", Mode: mode, IngressPort: 15443}
	return local, map[string]*model.Cluster{
		"a": {ID: "a", Region: "eu", Healthy: true},
		"b": {ID: "b", Region: "us", Healthy: true},
		"c": {ID: "c", Region: "eu", Healthy: true},
	}
}

func echoService(eps map[string][]model.Endpoint) *model.Service {
	return &model.Service{Key: echoKey, Type: model.ClusterSetIP, Ports: []model.Port{{Name: "grpc", Protocol: model.TCP, Port: 50051}}, Endpoints: eps}
}

// TestGRPCPriorityFailover drives gRPC-Go's own xDS client through the
// failover the clusterset promises: local first, the same region when
// local dies, back when it returns.
func TestGRPCPriorityFailover(t *testing.T) {
	local, clusters := threeClusters(model.Direct)
	e := newEnv(t, local, clusters)
	a1, a2 := startBackend(t, "a1"), startBackend(t, "a2")
	c1 := startBackend(t, "c1")
	b1 := startBackend(t, "b1")
	e.set(echoKey, echoService(map[string][]model.Endpoint{
		"a": {a1.endpoint(true), a2.endpoint(true)},
		"b": {b1.endpoint(true)},
		"c": {c1.endpoint(true)},
	}))
	cc := e.dial("echo.demo.svc.clusterset.local", e.bootstrap("a", ""), nil)

	// Steady state: only priority 0 (cluster a), round robin.
	got := waitFor(t, cc, "traffic on the local cluster", func(r tally) bool { return r.failed == 0 && r.by["a1"]+r.by["a2"] == 20 })
	steady := run(cc, 200)
	if steady.failed != 0 || steady.by["a1"]+steady.by["a2"] != 200 || steady.by["a1"] == 0 || steady.by["a2"] == 0 {
		t.Fatalf("steady state %v (failed %d): want all on a1 and a2", steady.by, steady.failed)
	}
	_ = got

	// Both local backends die hard while a client sends: the next RPCs go
	// to the same region's cluster c, none fails.
	done := make(chan tally)
	go func() { done <- run(cc, 600) }()
	time.Sleep(30 * time.Millisecond)
	killed := time.Now()
	a1.stop()
	a2.stop()
	during := <-done
	if during.failed != 0 {
		t.Errorf("%d RPCs failed while priority 0 died (%v): want none", during.failed, during.errs)
	}
	if during.by["c1"] == 0 || during.by["b1"] != 0 {
		t.Errorf("after priority 0 died traffic went to %v: want c1 (same region), never b1", during.by)
	}
	t.Logf("failover: %v over 600 RPCs, %d failed; first RPC served by c %v after the kill", during.by, during.failed, during.first["c1"].Sub(killed))

	// They return: traffic returns to them (after gRPC's reconnect backoff).
	a1.restart(t)
	a2.restart(t)
	waitFor(t, cc, "traffic back on the local cluster", func(r tally) bool { return r.failed == 0 && r.by["a1"]+r.by["a2"] == 20 })

	// The control plane marks the local pods not ready: traffic leaves at
	// once, without a connection failing.
	e.set(echoKey, echoService(map[string][]model.Endpoint{
		"a": {a1.endpoint(false), a2.endpoint(false)},
		"b": {b1.endpoint(true)},
		"c": {c1.endpoint(true)},
	}))
	waitFor(t, cc, "traffic on c when a's pods are not ready", func(r tally) bool { return r.failed == 0 && r.by["c1"] == 20 })

	// Cluster c's Lease expires: its pods are marked UNHEALTHY, b serves.
	e.setCluster(&model.Cluster{ID: "c", Region: "eu", Healthy: false, Reason: "LeaseExpired"})
	waitFor(t, cc, "traffic on b when c is unhealthy", func(r tally) bool { return r.failed == 0 && r.by["b1"] == 20 })
	e.setCluster(&model.Cluster{ID: "c", Region: "eu", Healthy: true})
	waitFor(t, cc, "traffic back on c when it recovers", func(r tally) bool { return r.failed == 0 && r.by["c1"] == 20 })
}

// TestGRPCLocalityWeights: two clusters at the same priority share the
// load by their ready endpoints (3:1 here).
func TestGRPCLocalityWeights(t *testing.T) {
	local, clusters := threeClusters(model.Direct)
	clusters["c"].Region = "us" // b and c both in the other region: one priority
	e := newEnv(t, local, clusters)
	b1, b2, b3, c1 := startBackend(t, "b1"), startBackend(t, "b2"), startBackend(t, "b3"), startBackend(t, "c1")
	e.set(echoKey, echoService(map[string][]model.Endpoint{
		"b": {b1.endpoint(true), b2.endpoint(true), b3.endpoint(true)},
		"c": {c1.endpoint(true)},
	}))
	cc := e.dial("echo.demo.svc.clusterset.local", e.bootstrap("a", ""), nil)
	waitFor(t, cc, "traffic", func(r tally) bool { return r.failed == 0 })
	r := run(cc, 800)
	share := float64(r.by["c1"]) / 800
	if r.failed != 0 || share < 0.15 || share > 0.35 {
		t.Errorf("c's share is %.2f of %v (failed %d): want about 0.25 (weights 3:1)", share, r.by, r.failed)
	}
}

// TestGRPCOutlierDetection: a backend that answers every RPC with an
// error is ejected within an interval or two and its peer takes all.
func TestGRPCOutlierDetection(t *testing.T) {
	local, clusters := threeClusters(model.Direct)
	e := newEnv(t, local, clusters)
	a1, a2 := startBackend(t, "a1"), startBackend(t, "a2")
	e.set(echoKey, echoService(map[string][]model.Endpoint{"a": {a1.endpoint(true), a2.endpoint(true)}}))
	cc := e.dial("echo.demo.svc.clusterset.local", e.bootstrap("a", ""), nil)
	waitFor(t, cc, "traffic on both", func(r tally) bool { return r.by["a1"] > 0 && r.by["a2"] > 0 })
	a1.setFailing(true)
	start := time.Now()
	waitFor(t, cc, "a1 ejected", func(r tally) bool { return r.failed == 0 && r.by["a2"] == 20 })
	t.Logf("a1 ejected after %v", time.Since(start))
}
