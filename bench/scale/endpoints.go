package main

import (
	"context"
	"fmt"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/isthmus-dev/isthmus/bench/internal/fleet"
)

// endpointService is the exported selector-less Service in a whose
// hand-written EndpointSlice the endpoint-change samples move.
const endpointService = "endpoints"

// measureEndpointChanges exports a selector-less Service from a with one
// endpoint, then moves that endpoint to a new address, one sample at a
// time, and times each change until the MCS slices in b and c both list
// the new address: the path an endpoint change takes through a's agent,
// the broker and the importers, under the simulated members' heartbeats.
func measureEndpointChanges(ctx context.Context, full []*fleet.Member, samples int) ([]time.Duration, error) {
	a := full[0].Cluster
	var watchers []*firstSeen
	for _, m := range full[1:] {
		w, err := watchSliceAddresses(ctx, m.Cluster.Client, benchNamespace, endpointService)
		if err != nil {
			return nil, err
		}
		watchers = append(watchers, w)
	}
	slice, err := fleet.ExportHandWritten(ctx, a, benchNamespace, endpointService, "10.241.200.0")
	if err != nil {
		return nil, err
	}
	for _, w := range watchers {
		if _, err := w.wait(ctx, "10.241.200.0"); err != nil {
			return nil, err
		}
	}
	var out []time.Duration
	for i := range samples {
		addr := fmt.Sprintf("10.241.%d.%d", 201+i/250, 1+i%250)
		slice.Endpoints[0].Addresses = []string{addr}
		start := time.Now()
		if slice, err = a.Client.DiscoveryV1().EndpointSlices(benchNamespace).Update(ctx, slice, metav1.UpdateOptions{}); err != nil {
			return nil, err
		}
		last, err := seenByAll(ctx, watchers, addr)
		if err != nil {
			return nil, err
		}
		out = append(out, last.Sub(start))
	}
	return out, nil
}

// watchSliceAddresses records every address the MCS slices of one
// imported service list in a cluster.
func watchSliceAddresses(ctx context.Context, kube kubernetes.Interface, ns, service string) (*firstSeen, error) {
	w := &firstSeen{at: map[string]time.Time{}}
	f := informers.NewSharedInformerFactoryWithOptions(kube, 0, informers.WithNamespace(ns),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = mcsv1beta1.LabelServiceName + "=" + service }))
	seen := func(o any) {
		es, ok := o.(*discoveryv1.EndpointSlice)
		if !ok {
			return
		}
		for _, e := range es.Endpoints {
			for _, addr := range e.Addresses {
				w.record(addr)
			}
		}
	}
	if _, err := f.Discovery().V1().EndpointSlices().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: seen, UpdateFunc: func(_, o any) { seen(o) }}); err != nil {
		return nil, err
	}
	f.Start(ctx.Done())
	f.WaitForCacheSync(ctx.Done())
	return w, nil
}
