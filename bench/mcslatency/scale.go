package main

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/isthmus-dev/isthmus/bench/internal/procstat"
	"github.com/isthmus-dev/isthmus/test/cluster"
)

const scaleNS = "scale"

// measureScale exports n selector-less services with 10 ready endpoints
// each from every member, waits until every member imports all n with all
// three clusters' endpoints, and reports the time it took and what the
// three agents (all in this process) cost.
func measureScale(ctx context.Context, cs *cluster.Clusterset, n int) error {
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	cpu0, began := procstat.Self(), time.Now()
	for _, m := range cs.Members {
		if _, err := m.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: scaleNS}}, metav1.CreateOptions{}); err != nil {
			return err
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(cs.Members))
	for mi, m := range cs.Members {
		wg.Go(func() { errs <- exportMany(ctx, m, mi, n) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	written := time.Since(began)
	for _, m := range cs.Members {
		mcs, err := mcsclient.NewForConfig(m.Config)
		if err != nil {
			return err
		}
		for {
			list, err := mcs.MulticlusterV1beta1().ServiceImports(scaleNS).List(ctx, metav1.ListOptions{})
			if err != nil {
				return err
			}
			complete := 0
			for _, si := range list.Items {
				if len(si.Status.Clusters) == len(cs.Members) && len(si.Spec.IPs) > 0 {
					complete++
				}
			}
			if complete == n {
				break
			}
			if ctx.Err() != nil {
				return fmt.Errorf("%s imports %d of %d services completely: %w", m.Name, complete, n, ctx.Err())
			}
			time.Sleep(time.Second)
		}
	}
	converged := time.Since(began)
	cpu := procstat.Self() - cpu0
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	fmt.Printf("\nscale: %d services × 10 endpoints exported from each of 3 members (%d exports, %d endpoints)\n", n, 3*n, 30*n)
	fmt.Printf("| what | figure |\n|---|---|\n")
	fmt.Printf("| objects written by the bench (Services, EndpointSlices, ServiceExports) | %v |\n", written.Round(time.Millisecond))
	fmt.Printf("| until every member imports every service from all 3 clusters | %v |\n", converged.Round(time.Millisecond))
	fmt.Printf("| process CPU over that time (3 agents + the bench's writers) | %v |\n", cpu.Round(time.Millisecond))
	fmt.Printf("| Go heap in use after GC, before → after (3 agents' caches) | %d → %d MiB (%.1f MiB per agent) |\n",
		before.HeapInuse>>20, after.HeapInuse>>20, float64(after.HeapInuse-before.HeapInuse)/3/(1<<20))
	return nil
}

// exportMany writes n services, each with a 10-endpoint slice, and their
// ServiceExports into member m, with a few writers in parallel.
func exportMany(ctx context.Context, m *cluster.Cluster, mi, n int) error {
	mcs, err := mcsclient.NewForConfig(m.Config)
	if err != nil {
		return err
	}
	work := make(chan int)
	errs := make(chan error, 8)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for i := range work {
				if err := exportOne(ctx, m, mcs, mi, i); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	for i := range n {
		select {
		case work <- i:
		case err := <-errs:
			close(work)
			return err
		}
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

func exportOne(ctx context.Context, m *cluster.Cluster, mcs mcsclient.Interface, mi, i int) error {
	name := fmt.Sprintf("s%d", i)
	if _, err := m.Client.CoreV1().Services(scaleNS).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
	}, metav1.CreateOptions{}); err != nil {
		return err
	}
	port, pname, ready := int32(8080), "http", true
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: name + "-bench", Labels: map[string]string{
			discoveryv1.LabelServiceName: name, discoveryv1.LabelManagedBy: "bench.isthmus.dev"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &pname, Port: &port}},
	}
	for e := range 10 {
		addr := fmt.Sprintf("10.%d.%d.%d", 241+mi, i/25, (i%25)*10+e+1)
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{addr}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}})
	}
	if _, err := m.Client.DiscoveryV1().EndpointSlices(scaleNS).Create(ctx, s, metav1.CreateOptions{}); err != nil {
		return err
	}
	_, err := mcs.MulticlusterV1beta1().ServiceExports(scaleNS).Create(ctx, &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	return err
}
