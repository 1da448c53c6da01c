package agent

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// BenchmarkObserveLease is one peer's Lease renewal arriving at an agent
// of a clusterset of 1,000 members: it judges that peer only, so its cost
// does not grow with the clusterset (judging all of them on every renewal
// made the agents' idle CPU grow with N², bench/scale).
func BenchmarkObserveLease(b *testing.B) {
	const n = 1000
	a := healthAgent(5*time.Minute, time.Now())
	lease := func(i int) *coordinationv1.Lease { return heartbeatLease(fmt.Sprintf("sim-%04d", i), 30) }
	for i := range n {
		l := lease(i)
		if err := a.leases.Add(l); err != nil {
			b.Fatal(err)
		}
		a.observeLease(l, false)
	}
	if len(a.health) != n {
		b.Fatalf("judged %d clusters, want %d", len(a.health), n)
	}
	b.ResetTimer()
	for i := range b.N {
		a.observeLease(lease(i%n), false)
	}
}

// TestHealthJudgedWhenDue: a peer that stops renewing is judged Lapsed,
// then Withdrawn, when each is due, with no tick to notice it (the tick
// here comes once an hour): watchHealth rechecks when the soonest
// judgement is due to change. With the tick alone, failover and
// withdrawal came up to a tick late, after the xDS server, which judges
// by the same rule, had already acted.
func TestHealthJudgedWhenDue(t *testing.T) {
	a := healthAgent(2*time.Second, time.Now().Add(-time.Minute))
	l := heartbeatLease("b", 1)
	if err := a.leases.Add(l); err != nil {
		t.Fatal(err)
	}
	a.observeLease(l, false)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go a.watchHealth(ctx, time.Hour)
	health := func() brokerv1.Health {
		a.healthMu.Lock()
		defer a.healthMu.Unlock()
		return a.health["b"]
	}
	for _, want := range []brokerv1.Health{brokerv1.Lapsed, brokerv1.Withdrawn} {
		// Generous: this is whether the judgement comes without a tick,
		// not how punctually (bench/scale measures that).
		deadline := time.Now().Add(30 * time.Second)
		for health() != want {
			if time.Now().After(deadline) {
				t.Fatalf("peer b is %v 30 s after it was due to be %v, with no tick: nothing rechecked it when due", health(), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// healthAgent is an agent with what judging its peers' health needs:
// its Lease store, no exports, and a broker link up since linked.
func healthAgent(withdrawAfter time.Duration, linked time.Time) *Agent {
	a := &Agent{
		cfg:           Config{ClusterID: "a", WithdrawAfter: withdrawAfter},
		log:           slog.New(slog.NewTextHandler(io.Discard, nil)),
		leases:        cache.NewStore(cache.MetaNamespaceKeyFunc),
		brokerExports: cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{byCluster: clusterIndex}),
		health:        map[string]brokerv1.Health{},
	}
	a.heartbeats.Default = 30 * time.Second
	a.link.Store(&brokerv1.BrokerLink{Up: true, Since: linked})
	return a
}

// heartbeatLease is cluster id's heartbeat Lease, renewed now.
func heartbeatLease(id string, seconds int32) *coordinationv1.Lease {
	now := metav1.NewMicroTime(time.Now())
	return &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Namespace: brokerv1.DefaultBrokerNamespace, Name: brokerv1.LeaseName(id),
			Labels: map[string]string{brokerv1.LabelSourceCluster: id}},
		Spec: coordinationv1.LeaseSpec{LeaseDurationSeconds: &seconds, RenewTime: &now},
	}
}
