package main

import (
	"context"
	"fmt"
	"sync"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/api/crds"
	"github.com/isthmus-dev/isthmus/test/cluster"
)

const namespaces = 10

// dataset is what the bench writes and queries: n ClusterSetIP services
// and n/10 headless ones with 3 ready endpoints each (as research/dns.md
// §7 did), in namespaces ns0..ns9.
type dataset struct {
	clusterSetIP, headless int
}

func (d dataset) svc(i int) (ns, name string) {
	return fmt.Sprintf("ns%d", i%namespaces), fmt.Sprintf("svc%d", i)
}
func (d dataset) hl(i int) (ns, name string) {
	return fmt.Sprintf("ns%d", i%namespaces), fmt.Sprintf("hl%d", i)
}
func (d dataset) vip(i int) string { return fmt.Sprintf("10.%d.%d.%d", 100+i/65536, i/256%256, i%256) }
func (d dataset) podIP(i, j int) string {
	return fmt.Sprintf("10.%d.%d.%d", 200+i/65536, i/256%256, 10+j)
}

// the clusters the headless endpoints come from.
func (d dataset) cluster(i int) string { return []string{"cluster-a", "cluster-b"}[i%2] }

func installCRDs(ctx context.Context, m *cluster.Cluster) error {
	list, err := crds.Member()
	if err != nil {
		return err
	}
	return m.InstallCRDs(ctx, list)
}

// write creates every object with a few writers in parallel.
func (d dataset) write(ctx context.Context, kc kubernetes.Interface, mc mcsclient.Interface) error {
	for i := range namespaces {
		if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("ns%d", i)}}, metav1.CreateOptions{}); err != nil {
			return err
		}
	}
	jobs := make(chan func() error)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			for j := range jobs {
				if err := j(); err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		})
	}
	for i := range d.clusterSetIP {
		jobs <- func() error {
			ns, name := d.svc(i)
			_, err := mc.MulticlusterV1beta1().ServiceImports(ns).Create(ctx, &mcsv1beta1.ServiceImport{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
				Spec: mcsv1beta1.ServiceImportSpec{Type: mcsv1beta1.ClusterSetIP, IPs: []string{d.vip(i)},
					Ports: []mcsv1beta1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}}},
			}, metav1.CreateOptions{})
			return err
		}
	}
	for i := range d.headless {
		jobs <- func() error {
			ns, name := d.hl(i)
			if _, err := mc.MulticlusterV1beta1().ServiceImports(ns).Create(ctx, &mcsv1beta1.ServiceImport{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
				Spec: mcsv1beta1.ServiceImportSpec{Type: mcsv1beta1.Headless,
					Ports: []mcsv1beta1.ServicePort{{Name: "tcp-5432", Protocol: corev1.ProtocolTCP, Port: 5432}}},
			}, metav1.CreateOptions{}); err != nil {
				return err
			}
			_, err := kc.DiscoveryV1().EndpointSlices(ns).Create(ctx, d.slice(i, d.podIP(i, 0)), metav1.CreateOptions{})
			return err
		}
	}
	close(jobs)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

// slice is headless service i's EndpointSlice; first is the address of
// pod-0 (the update-latency probe changes it).
func (d dataset) slice(i int, first string) *discoveryv1.EndpointSlice {
	ns, name := d.hl(i)
	ready := true
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-" + d.cluster(i), Labels: map[string]string{
			mcsv1beta1.LabelServiceName: name, mcsv1beta1.LabelSourceCluster: d.cluster(i),
			// As the agent writes them: isthmus dns reads no other MCS slices.
			discoveryv1.LabelManagedBy: brokerv1.ManagedBy,
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("tcp-5432"), Protocol: ptr(corev1.ProtocolTCP), Port: ptr(int32(5432))}},
	}
	for j := range 3 {
		addr := d.podIP(i, j)
		if j == 0 {
			addr = first
		}
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{addr}, Hostname: ptr(fmt.Sprintf("pod-%d", j)),
			Conditions: discoveryv1.EndpointConditions{Ready: &ready}})
	}
	return es
}

func ptr[T any](v T) *T { return &v }

// queries writes dnsperf's query file: a shuffled mix of ClusterSetIP A,
// headless A, per-pod A, SRV of both kinds, and 20% names that do not
// exist (NXDOMAIN), as research/dns.md §7.
func (d dataset) queries(zone string, seed uint64) []string {
	var q []string
	for i := range d.clusterSetIP {
		ns, n := d.svc(i)
		q = append(q, fmt.Sprintf("%s.%s.svc.%s A", n, ns, zone))
		if i%10 == 0 {
			q = append(q, fmt.Sprintf("_http._tcp.%s.%s.svc.%s SRV", n, ns, zone))
		}
	}
	for i := range d.headless {
		ns, n := d.hl(i)
		q = append(q, fmt.Sprintf("%s.%s.svc.%s A", n, ns, zone),
			fmt.Sprintf("pod-0.%s.%s.%s.svc.%s A", d.cluster(i), n, ns, zone),
			fmt.Sprintf("pod-1.%s.%s.%s.svc.%s A", d.cluster(i), n, ns, zone))
		if i%2 == 0 {
			q = append(q, fmt.Sprintf("_tcp-5432._tcp.%s.%s.svc.%s SRV", n, ns, zone))
		}
	}
	nx := len(q) / 4 // 20% of the total
	for k := range nx {
		q = append(q, fmt.Sprintf("missing%d.ns%d.svc.%s A", k, k%namespaces, zone))
	}
	r := newRand(seed)
	for i := len(q) - 1; i > 0; i-- {
		j := int(r.next() % uint64(i+1))
		q[i], q[j] = q[j], q[i]
	}
	return q
}

// newRand is a small deterministic generator, so the query file is the
// same in every run.
type splitmix struct{ s uint64 }

func newRand(seed uint64) *splitmix { return &splitmix{seed} }
func (r *splitmix) next() uint64 {
	r.s += 0x9e3779b97f4a7c15
	z := r.s
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}
