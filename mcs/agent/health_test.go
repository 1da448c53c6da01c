package agent

import (
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
	a := &Agent{
		cfg:           Config{ClusterID: "a", WithdrawAfter: 5 * time.Minute},
		log:           slog.New(slog.NewTextHandler(io.Discard, nil)),
		leases:        cache.NewStore(cache.MetaNamespaceKeyFunc),
		brokerExports: cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{byCluster: clusterIndex}),
		health:        map[string]brokerv1.Health{},
	}
	a.heartbeats.Default = 30 * time.Second
	a.link.Store(&brokerv1.BrokerLink{Up: true, Since: time.Now()})
	lease := func(i int) *coordinationv1.Lease {
		id := fmt.Sprintf("sim-%04d", i)
		d, now := int32(30), metav1.NewMicroTime(time.Now())
		return &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Namespace: brokerv1.DefaultBrokerNamespace, Name: brokerv1.LeaseName(id),
				Labels: map[string]string{brokerv1.LabelSourceCluster: id}},
			Spec: coordinationv1.LeaseSpec{LeaseDurationSeconds: &d, RenewTime: &now},
		}
	}
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
