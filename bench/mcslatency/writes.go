package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/isthmus-dev/isthmus/bench/internal/fleet"
	brokerclient "github.com/isthmus-dev/isthmus/mcs/api/broker/generated/clientset/versioned"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/setup"
	"github.com/isthmus-dev/isthmus/test/cluster"
)

// -writes: the cost of one write of each kind the propagation path makes,
// alone. Nothing else writes (no agent runs), the writes are sequential,
// each of a new object, and each is timed from the client's request to
// its response. It separates what a hop costs because of the object it
// writes (a CRD object, a server-side apply, the broker's admission
// policies for a member's identity) from what it costs because other work
// runs beside it.

// writeKind is one kind of write: do writes object i.
type writeKind struct {
	name string
	do   func(ctx context.Context, i int) error
}

func measureWrites(samples int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cs, err := cluster.New(ctx, cluster.Options{Broker: true, Members: 2, Log: log})
	if err != nil {
		return err
	}
	defer cs.Stop()
	// Joined as the agents are (the MCS CRDs in the members), but no
	// agent runs.
	if _, err := fleet.Join(ctx, cs, log, nil); err != nil {
		return err
	}
	hub, err := setup.NewClients(cs.Broker.Config)
	if err != nil {
		return err
	}
	// The member identity that writes records: one more member as
	// bench/scale's simulated ones are, with its own ranges.
	const id = "w"
	memberCfg, err := setup.MemberCredentials(ctx, hub, setup.JoinOptions{ClusterID: id,
		PodCIDRs: []string{"10.200.0.0/16"}, ServiceCIDRs: []string{"10.201.0.0/16"}}, "uid-"+id)
	if err != nil {
		return err
	}
	asMember, err := brokerclient.NewForConfig(memberCfg)
	if err != nil {
		return err
	}
	hubAdmin, err := brokerclient.NewForConfig(cs.Broker.Config)
	if err != nil {
		return err
	}
	a, b := cs.Members[0], cs.Members[1]
	mcsA, err := mcsclient.NewForConfig(a.Config)
	if err != nil {
		return err
	}
	mcsB, err := mcsclient.NewForConfig(b.Config)
	if err != nil {
		return err
	}
	for _, c := range []kubernetes.Interface{a.Client, b.Client} {
		if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			return err
		}
	}
	hubNS := brokerv1.DefaultBrokerNamespace
	opts := metav1.PatchOptions{FieldManager: "bench", Force: ptrTrue()}
	record := func(svc string) *brokerv1.ExportedService {
		return &brokerv1.ExportedService{
			TypeMeta: metav1.TypeMeta{APIVersion: brokerv1.SchemeGroupVersion.String(), Kind: "ExportedService"},
			ObjectMeta: metav1.ObjectMeta{Name: brokerv1.ExportedServiceName(id, ns, svc), Labels: map[string]string{
				brokerv1.LabelSourceCluster: id, brokerv1.LabelServiceName: svc, brokerv1.LabelServiceNamespace: ns}},
			Spec: brokerv1.ExportedServiceSpec{SourceCluster: id, ServiceNamespace: ns, ServiceName: svc, Type: brokerv1.ClusterSetIP,
				Ports: []brokerv1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}}, ExportCreationTimestamp: metav1.Now()},
		}
	}
	serviceImport := func(name string) *mcsv1beta1.ServiceImport {
		return &mcsv1beta1.ServiceImport{
			TypeMeta:   metav1.TypeMeta{APIVersion: mcsv1beta1.SchemeGroupVersion.String(), Kind: "ServiceImport"},
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"bench": "yes"}},
			Spec: mcsv1beta1.ServiceImportSpec{Type: mcsv1beta1.ClusterSetIP,
				Ports: []mcsv1beta1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}}},
		}
	}
	kinds := []writeKind{
		{"POST configmaps, member a, admin (the floor's write)", func(ctx context.Context, i int) error {
			_, err := a.Client.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("w-%d", i)}}, metav1.CreateOptions{})
			return err
		}},
		{"POST configmaps, broker, admin (the floor's write)", func(ctx context.Context, i int) error {
			_, err := cs.Broker.Client.CoreV1().ConfigMaps(hubNS).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("w-%d", i)}}, metav1.CreateOptions{})
			return err
		}},
		{"POST serviceexports, member a, admin (the user's write)", func(ctx context.Context, i int) error {
			_, err := mcsA.MulticlusterV1beta1().ServiceExports(ns).Create(ctx, &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("w-%d", i)}}, metav1.CreateOptions{})
			return err
		}},
		{"POST exportedservices, broker, admin", func(ctx context.Context, i int) error {
			_, err := hubAdmin.BrokerV1alpha1().ExportedServices(hubNS).Create(ctx, record(fmt.Sprintf("admin-post-%d", i)), metav1.CreateOptions{})
			return err
		}},
		{"POST exportedservices, broker, member w (admission)", func(ctx context.Context, i int) error {
			_, err := asMember.BrokerV1alpha1().ExportedServices(hubNS).Create(ctx, record(fmt.Sprintf("post-%d", i)), metav1.CreateOptions{})
			return err
		}},
		{"APPLY exportedservices (new), broker, member w (admission)", func(ctx context.Context, i int) error {
			rec := record(fmt.Sprintf("apply-%d", i))
			data, err := json.Marshal(rec)
			if err != nil {
				return err
			}
			_, err = asMember.BrokerV1alpha1().ExportedServices(hubNS).Patch(ctx, rec.Name, types.ApplyPatchType, data, opts)
			return err
		}},
		{"POST serviceimports, member b, admin", func(ctx context.Context, i int) error {
			_, err := mcsB.MulticlusterV1beta1().ServiceImports(ns).Create(ctx, serviceImport(fmt.Sprintf("post-%d", i)), metav1.CreateOptions{})
			return err
		}},
		{"APPLY serviceimports (new), member b, admin (the agent's import)", func(ctx context.Context, i int) error {
			si := serviceImport(fmt.Sprintf("apply-%d", i))
			data, err := json.Marshal(si)
			if err != nil {
				return err
			}
			_, err = mcsB.MulticlusterV1beta1().ServiceImports(ns).Patch(ctx, si.Name, types.ApplyPatchType, data, opts)
			return err
		}},
	}
	fmt.Printf("load average at the start: %s\n", loadavg())
	fmt.Printf("conditions: %d sequential writes of each kind, each of a new object, nothing else writing; broker + 2 members (real kube-apiserver, etcd) on loopback; %d CPUs\n\n", samples, runtime.NumCPU())
	fmt.Printf("| write | p50 | p99 | p50 / floor's p50 |\n|---|---|---|---|\n")
	var floor time.Duration
	for k, kind := range kinds {
		// A few unmeasured writes first: the first of a kind pays for
		// caches (the CRD's handler, the policies' compiled programs).
		for i := range 5 {
			if err := kind.do(ctx, 1_000_000+i); err != nil {
				return fmt.Errorf("%s: %w", kind.name, err)
			}
		}
		var d []time.Duration
		for i := range samples {
			start := time.Now()
			if err := kind.do(ctx, i); err != nil {
				return fmt.Errorf("%s: %w", kind.name, err)
			}
			d = append(d, time.Since(start))
		}
		if k == 0 {
			floor = pct(d, 50)
		}
		fmt.Printf("| %s | %v | %v | %.2f |\n", kind.name, pct(d, 50), pct(d, 99),
			float64(pct(d, 50))/float64(floor))
	}
	fmt.Printf("load average at the end: %s\n", loadavg())
	return nil
}

func ptrTrue() *bool { t := true; return &t }
