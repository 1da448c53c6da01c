package main

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

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
	mcsA, err := mcsclient.NewForConfig(a.Config)
	if err != nil {
		return nil, err
	}
	var watchers []*firstSeen
	for _, m := range full[1:] {
		w, err := watchSliceAddresses(ctx, m.Cluster.Client, benchNamespace, endpointService)
		if err != nil {
			return nil, err
		}
		watchers = append(watchers, w)
	}
	if _, err := a.Client.CoreV1().Services(benchNamespace).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: endpointService},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
	}, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	port, pname, ready := int32(8080), "http", true
	slice, err := a.Client.DiscoveryV1().EndpointSlices(benchNamespace).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: endpointService + "-bench", Labels: map[string]string{
			discoveryv1.LabelServiceName: endpointService, discoveryv1.LabelManagedBy: "bench.isthmus.dev"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.241.200.0"}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
		Ports:       []discoveryv1.EndpointPort{{Name: &pname, Port: &port}},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, err
	}
	if _, err := mcsA.MulticlusterV1beta1().ServiceExports(benchNamespace).Create(ctx, &mcsv1beta1.ServiceExport{
		ObjectMeta: metav1.ObjectMeta{Name: endpointService}}, metav1.CreateOptions{}); err != nil {
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
