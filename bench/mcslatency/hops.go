package main

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"

	brokerclient "github.com/isthmus-dev/isthmus/mcs/api/broker/generated/clientset/versioned"
	brokerinformers "github.com/isthmus-dev/isthmus/mcs/api/broker/generated/informers/externalversions"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/test/cluster"
)

// The breakdown: besides the end-to-end time, each sample records when
// the bench's own watch on the broker first saw the relayed object, which
// splits the path into its two halves, each ending in one watch hop to an
// observer of the same kind:
//
//   - A → broker: the write in A, A's watch to the relay (the floor's relay
//     or a's agent: its export reconcile and the server-side apply of the
//     record through the broker's admission policy), the broker's watch;
//   - broker → B: b's watch of the broker, b's import reconcile and its
//     write in B, B's watch.

// brokerSeen watches the broker for the objects of one measurement.
type brokerSeen struct{ floor, exports, slices *seen }

func watchBroker(ctx context.Context, hub *cluster.Cluster) (*brokerSeen, error) {
	ns := brokerv1.DefaultBrokerNamespace
	b := &brokerSeen{
		floor: newSeen(func(o any) (string, bool) {
			cm := o.(*corev1.ConfigMap)
			return cm.Name, cm.Labels["floor"] == "yes"
		}),
		exports: newSeen(func(o any) (string, bool) {
			e := o.(*brokerv1.ExportedService)
			return e.Spec.ServiceName, e.Spec.SourceCluster == "a"
		}),
		slices: newSeen(func(o any) (string, bool) {
			es := o.(*discoveryv1.EndpointSlice)
			if es.Labels[brokerv1.LabelSourceCluster] != "a" || len(es.Endpoints) == 0 || len(es.Endpoints[0].Addresses) == 0 {
				return "", false
			}
			return es.Endpoints[0].Addresses[0], true
		}),
	}
	kube, err := kubernetes.NewForConfig(hub.Config)
	if err != nil {
		return nil, err
	}
	kf := informers.NewSharedInformerFactoryWithOptions(kube, 0, informers.WithNamespace(ns))
	if _, err := kf.Core().V1().ConfigMaps().Informer().AddEventHandler(b.floor.handlers()); err != nil {
		return nil, err
	}
	if _, err := kf.Discovery().V1().EndpointSlices().Informer().AddEventHandler(b.slices.handlers()); err != nil {
		return nil, err
	}
	bc, err := brokerclient.NewForConfig(hub.Config)
	if err != nil {
		return nil, err
	}
	bf := brokerinformers.NewSharedInformerFactoryWithOptions(bc, 0, brokerinformers.WithNamespace(ns))
	if _, err := bf.Broker().V1alpha1().ExportedServices().Informer().AddEventHandler(b.exports.handlers()); err != nil {
		return nil, err
	}
	kf.Start(ctx.Done())
	bf.Start(ctx.Done())
	kf.WaitForCacheSync(ctx.Done())
	bf.WaitForCacheSync(ctx.Done())
	return b, nil
}

// hops are one measurement's samples: the whole path and its first half.
type hops struct{ total, first []time.Duration }

func (h *hops) add(start, mid, end time.Time) {
	h.total = append(h.total, end.Sub(start))
	h.first = append(h.first, mid.Sub(start))
}

func (h hops) second() []time.Duration {
	out := make([]time.Duration, len(h.total))
	for i := range h.total {
		out[i] = h.total[i] - h.first[i]
	}
	return out
}

// printBreakdown prints each path's halves beside the floor's (the first
// path).
func printBreakdown(paths []*path) {
	fmt.Printf("\n| where the time goes | A → broker p50 / p99 | ÷ floor's p50 | broker → B p50 / p99 | ÷ floor's p50 |\n|---|---|---|---|---|\n")
	f1, f2 := pct(paths[0].h.first, 50), pct(paths[0].h.second(), 50)
	for _, p := range paths {
		h := p.h
		fmt.Printf("| %s | %v / %v | %.2f | %v / %v | %.2f |\n", p.name,
			pct(h.first, 50), pct(h.first, 99), float64(pct(h.first, 50))/float64(f1),
			pct(h.second(), 50), pct(h.second(), 99), float64(pct(h.second(), 50))/float64(f2))
	}
}
