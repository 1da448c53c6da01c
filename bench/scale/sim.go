package main

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	brokerclient "github.com/isthmus-dev/isthmus/mcs/api/broker/generated/clientset/versioned"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/setup"
)

// The simulated members run in a child process of the benchmark, so that
// the benchmark's own CPU and heap are those of the three full agents. Each
// member joins with its own identity (setup.MemberCredentials: the broker
// side of `isthmusctl join`) and writes, as an agent would, its Cluster
// record, K exports with one EndpointSlice each (in a namespace the full
// members have, so they import them), and renews its Lease every third of
// the Lease duration from then on. It reads commands on stdin: "stop <id>" ends one member's
// renewals (it dies); it prints "ready" once every member has written its
// records.

func simName(i int) string { return fmt.Sprintf("sim-%04d", i) }

// simPodCIDR is member i's pod range, approved at its join.
func simPodCIDR(i int) string { return fmt.Sprintf("10.%d.%d.0/24", 64+i/256, i%256) }

func runSims(ctx context.Context, log *slog.Logger, kubeconfig string, n, k int, lease time.Duration) error {
	hubCfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	hubCfg.QPS, hubCfg.Burst = 500, 1000
	hub, err := setup.NewClients(hubCfg)
	if err != nil {
		return err
	}
	type sim struct {
		id      string
		kube    kubernetes.Interface
		lease   *coordinationv1.Lease
		stopped atomic.Bool
	}
	sims := make([]*sim, n)
	// Each member renews every third of the Lease duration from the moment
	// its records are written, as an agent does from its start: waiting
	// for the whole setup (minutes at N = 1,000) would let every Lease
	// lapse and have the full members withdraw and import them again.
	// Members finish their setup at different times, so their renewals
	// spread over the period as independent agents' would.
	period := lease / 3
	renewals := func(s *sim) {
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if s.stopped.Load() {
				return
			}
			l, err := renew(ctx, s.kube, s.id, lease, s.lease)
			if err != nil && ctx.Err() == nil {
				log.Warn("renewing", "member", s.id, "err", err)
			}
			s.lease = l // nil after a failure: read afresh next time
		}
	}
	jobs := make(chan int)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for i := range jobs {
				kube, l, err := startSim(ctx, hub, i, k, lease)
				if err != nil {
					errs <- fmt.Errorf("%s: %w", simName(i), err)
					continue
				}
				sims[i] = &sim{id: simName(i), kube: kube, lease: l}
				go renewals(sims[i])
			}
		})
	}
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
	}
	fmt.Println("ready")

	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if id, ok := strings.CutPrefix(in.Text(), "stop "); ok {
			for _, s := range sims {
				if s.id == id {
					s.stopped.Store(true)
				}
			}
		}
	}
	<-ctx.Done()
	return nil
}

// startSim joins member i and writes its records and first Lease.
func startSim(ctx context.Context, hub *setup.Clients, i, k int, lease time.Duration) (kubernetes.Interface, *coordinationv1.Lease, error) {
	id := simName(i)
	cfg, err := setup.MemberCredentials(ctx, hub, setup.JoinOptions{ClusterID: id,
		PodCIDRs: []string{simPodCIDR(i)}, ServiceCIDRs: []string{fmt.Sprintf("10.%d.%d.0/24", 128+i/256, i%256)}}, "uid-"+id)
	if err != nil {
		return nil, nil, err
	}
	cfg.QPS, cfg.Burst = 50, 100
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	bc, err := brokerclient.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	ns := brokerv1.DefaultBrokerNamespace
	own := map[string]string{brokerv1.LabelSourceCluster: id}
	if _, err := bc.BrokerV1alpha1().Clusters(ns).Create(ctx, &brokerv1.Cluster{
		ObjectMeta: metav1.ObjectMeta{Name: id, Labels: own},
		Spec: brokerv1.ClusterSpec{ClusterID: id, Region: []string{"eu", "us", "ap"}[i%3],
			PodCIDRs: []string{simPodCIDR(i)}, Versions: map[string]string{"agent": "sim"}},
	}, metav1.CreateOptions{}); err != nil {
		return nil, nil, fmt.Errorf("the Cluster record: %w", err)
	}
	l, err := renew(ctx, kube, id, lease, nil)
	if err != nil {
		return nil, nil, err
	}
	ready, port, pname, proto := true, int32(8080), "http", corev1.ProtocolTCP
	for j := range k {
		svc := fmt.Sprintf("s%d", j)
		labels := map[string]string{brokerv1.LabelSourceCluster: id, brokerv1.LabelServiceName: svc, brokerv1.LabelServiceNamespace: simNamespace}
		if _, err := bc.BrokerV1alpha1().ExportedServices(ns).Create(ctx, &brokerv1.ExportedService{
			ObjectMeta: metav1.ObjectMeta{Name: brokerv1.ExportedServiceName(id, simNamespace, svc), Labels: labels},
			Spec: brokerv1.ExportedServiceSpec{SourceCluster: id, ServiceNamespace: simNamespace, ServiceName: svc, Type: brokerv1.ClusterSetIP,
				Ports: []brokerv1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}}, ExportCreationTimestamp: metav1.Now()},
		}, metav1.CreateOptions{}); err != nil {
			return nil, nil, fmt.Errorf("export %s: %w", svc, err)
		}
		sl := map[string]string{discoveryv1.LabelManagedBy: brokerv1.ManagedBy}
		for k, v := range labels {
			sl[k] = v
		}
		if _, err := kube.DiscoveryV1().EndpointSlices(ns).Create(ctx, &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: fmt.Sprintf("%s-%s-%s", id, simNamespace, svc), Labels: sl},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints: []discoveryv1.Endpoint{{Addresses: []string{fmt.Sprintf("10.%d.%d.%d", 64+i/256, i%256, 10+j)},
				Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
			Ports: []discoveryv1.EndpointPort{{Name: &pname, Port: &port, Protocol: &proto}},
		}, metav1.CreateOptions{}); err != nil {
			return nil, nil, fmt.Errorf("slice %s: %w", svc, err)
		}
	}
	return kube, l, nil
}

// renew writes member id's Lease as the agent does: one update from the
// copy the last write returned; after a failure (which may have landed:
// a timeout) the next renewal reads the Lease first, and creates it if
// there is none.
func renew(ctx context.Context, kube kubernetes.Interface, id string, lease time.Duration, prev *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	api := kube.CoordinationV1().Leases(brokerv1.DefaultBrokerNamespace)
	now, secs := metav1.NowMicro(), int32(lease/time.Second)
	if prev == nil {
		cur, err := api.Get(ctx, brokerv1.LeaseName(id), metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			holder := id
			created, err := api.Create(ctx, &coordinationv1.Lease{
				ObjectMeta: metav1.ObjectMeta{Name: brokerv1.LeaseName(id), Labels: map[string]string{brokerv1.LabelSourceCluster: id}},
				Spec:       coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &secs, AcquireTime: &now, RenewTime: &now},
			}, metav1.CreateOptions{})
			if err != nil {
				return nil, err
			}
			return created, nil
		}
		if err != nil {
			return nil, err
		}
		prev = cur
	}
	l := prev.DeepCopy()
	l.Spec.RenewTime = &now
	out, err := api.Update(ctx, l, metav1.UpdateOptions{})
	if err != nil {
		return nil, err // client-go returns an empty object beside the error
	}
	return out, nil
}
