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
	mcsinformers "sigs.k8s.io/mcs-api/pkg/client/informers/externalversions"

	"github.com/isthmus-dev/isthmus/bench/internal/fleet"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/test/cluster"
)

// The three measured paths. Each setup prepares its path and returns its
// sampler: the i-th sample waits the gap, makes one change in A and
// returns when it started, when the bench's broker watch saw it relayed
// and when B's watch saw it arrive.

type sampler func(ctx context.Context, i int) (start, mid, end time.Time, err error)

// setupFloor relays ConfigMaps A -> broker -> B with one watch and one
// write per hop, the least any controller could do.
func setupFloor(ctx context.Context, cs *cluster.Clusterset, bs *brokerSeen) sampler {
	a, hub, b := cs.Members[0].Client, cs.Broker.Client, cs.Members[1].Client
	relay := func(from kubernetes.Interface, fromNS string, to kubernetes.Interface, toNS string) {
		f := informers.NewSharedInformerFactoryWithOptions(from, 0, informers.WithNamespace(fromNS))
		inf := f.Core().V1().ConfigMaps().Informer()
		inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: func(o any) {
			cm := o.(*corev1.ConfigMap)
			if cm.Labels["floor"] != "yes" {
				return
			}
			_, _ = to.CoreV1().ConfigMaps(toNS).Create(ctx, &corev1.ConfigMap{
				ObjectMeta: metav1.ObjectMeta{Name: cm.Name, Labels: cm.Labels}, Data: cm.Data}, metav1.CreateOptions{})
		}})
		f.Start(ctx.Done())
		f.WaitForCacheSync(ctx.Done())
	}
	relay(a, ns, hub, brokerv1.DefaultBrokerNamespace)
	relay(hub, brokerv1.DefaultBrokerNamespace, b, ns)
	s := newSeen(func(o any) (string, bool) {
		return o.(*corev1.ConfigMap).Name, o.(*corev1.ConfigMap).Labels["floor"] == "yes"
	})
	f := informers.NewSharedInformerFactoryWithOptions(b, 0, informers.WithNamespace(ns))
	f.Core().V1().ConfigMaps().Informer().AddEventHandler(s.handlers())
	f.Start(ctx.Done())
	f.WaitForCacheSync(ctx.Done())

	return func(ctx context.Context, i int) (start, mid, end time.Time, err error) {
		name := fmt.Sprintf("floor-%d", i)
		time.Sleep(gap)
		start = time.Now()
		if _, err = a.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"floor": "yes"}}}, metav1.CreateOptions{}); err != nil {
			return
		}
		if end, err = s.wait(ctx, name); err != nil {
			return
		}
		mid, err = bs.floor.wait(ctx, name)
		return
	}
}

// setupExports times ServiceExport creation in A until the ServiceImport
// appears in B, for Services created one gap before.
func setupExports(ctx context.Context, a, b *cluster.Cluster, bs *brokerSeen) (sampler, error) {
	mcsA, err := mcsclient.NewForConfig(a.Config)
	if err != nil {
		return nil, err
	}
	mcsB, err := mcsclient.NewForConfig(b.Config)
	if err != nil {
		return nil, err
	}
	s := newSeen(func(o any) (string, bool) { return o.(*mcsv1beta1.ServiceImport).Name, true })
	f := mcsinformers.NewSharedInformerFactoryWithOptions(mcsB, 0, mcsinformers.WithNamespace(ns))
	f.Multicluster().V1beta1().ServiceImports().Informer().AddEventHandler(s.handlers())
	f.Start(ctx.Done())
	f.WaitForCacheSync(ctx.Done())
	return func(ctx context.Context, i int) (start, mid, end time.Time, err error) {
		name := fmt.Sprintf("svc-%d", i)
		if _, err = a.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
		}, metav1.CreateOptions{}); err != nil {
			return
		}
		time.Sleep(gap)
		start = time.Now()
		if _, err = mcsA.MulticlusterV1beta1().ServiceExports(ns).Create(ctx, &mcsv1beta1.ServiceExport{
			ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
			return
		}
		if end, err = s.wait(ctx, name); err != nil {
			return
		}
		mid, err = bs.exports.wait(ctx, name)
		return
	}, nil
}

// setupEndpoints exports a selector-less Service of A with a hand-written
// EndpointSlice; each sample changes the slice's address and times until
// B's MCS slice lists the new address.
func setupEndpoints(ctx context.Context, a, b *cluster.Cluster, bs *brokerSeen) (sampler, error) {
	const svc = "endpoints"
	created, err := fleet.ExportHandWritten(ctx, a, ns, svc, "10.241.100.0")
	if err != nil {
		return nil, err
	}
	s := newSeen(func(o any) (string, bool) {
		es := o.(*discoveryv1.EndpointSlice)
		if es.Labels[mcsv1beta1.LabelServiceName] != svc || len(es.Endpoints) == 0 || len(es.Endpoints[0].Addresses) == 0 {
			return "", false
		}
		return es.Endpoints[0].Addresses[0], true
	})
	f := informers.NewSharedInformerFactoryWithOptions(b.Client, 0, informers.WithNamespace(ns))
	f.Discovery().V1().EndpointSlices().Informer().AddEventHandler(s.handlers())
	f.Start(ctx.Done())
	f.WaitForCacheSync(ctx.Done())
	if _, err := s.wait(ctx, "10.241.100.0"); err != nil {
		return nil, err
	}
	return func(ctx context.Context, i int) (start, mid, end time.Time, err error) {
		addr := fmt.Sprintf("10.241.%d.%d", 101+i/250, 1+i%250)
		created.Endpoints[0].Addresses = []string{addr}
		time.Sleep(gap)
		start = time.Now()
		updated, err := a.Client.DiscoveryV1().EndpointSlices(ns).Update(ctx, created, metav1.UpdateOptions{})
		if err != nil {
			return
		}
		created = updated
		if end, err = s.wait(ctx, addr); err != nil {
			return
		}
		mid, err = bs.slices.wait(ctx, addr)
		return
	}, nil
}
