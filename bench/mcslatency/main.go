// Command mcslatency measures how fast the MCS agent carries a change from
// one member cluster to another, against the floor measured in the same
// run on the same apiservers: a bare client-go write in cluster A relayed
// through two watch hops (A -> broker -> B) by the simplest possible
// relays. It starts its own clusterset (test/cluster: real apiservers,
// etcd, controller managers and KWOK), installs the broker, joins two
// members with their own identities and runs their agents in process.
//
//	go run ./bench/mcslatency -samples 200
//
// It prints p50/p99 of each measurement and the ratio to the floor.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
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

const ns = "bench"

// gap is the pause before each sample (-gap): one change at a time is the
// latency a user sees; back to back, each sample also waits on the
// previous one's follow-up writes.
var gap time.Duration

func main() {
	samples := flag.Int("samples", 200, "samples per measurement")
	services := flag.Int("services", 0, "then export this many services × 10 endpoints from each of the three members and report the agents' CPU and memory")
	flag.DurationVar(&gap, "gap", 250*time.Millisecond, "pause before each sample, so that it starts after the previous one's follow-up work (the source's status, the other members' imports) has settled; 0 runs the samples back to back")
	writes := flag.Bool("writes", false, "instead: time each kind of write the path makes, alone (no agent running)")
	flag.Parse()
	run := run
	if *writes {
		run = func(samples, _ int) error { return measureWrites(samples) }
	}
	if err := run(*samples, *services); err != nil {
		fmt.Fprintln(os.Stderr, "mcslatency:", err)
		os.Exit(1)
	}
}

func run(samples, services int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cs, err := cluster.New(ctx, cluster.Options{Broker: true, Members: 3, Log: log})
	if err != nil {
		return err
	}
	defer cs.Stop()
	// The agents stop before the clusterset does (deferred calls run last
	// first), so they do not report the broker lost at the end.
	agentCtx, stopAgents := context.WithCancel(ctx)
	defer stopAgents()
	a, b := cs.Members[0], cs.Members[1]
	full, err := fleet.JoinAndRun(agentCtx, cs, log, nil)
	if err != nil {
		return err
	}
	for _, m := range cs.Members {
		if _, err := m.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			return err
		}
	}

	load0 := loadavg()
	bs, err := watchBroker(ctx, cs.Broker)
	if err != nil {
		return err
	}
	var readings []servers
	readServersInto := func() error {
		s, err := readServers(ctx, cs)
		readings = append(readings, s)
		return err
	}
	if err := readServersInto(); err != nil {
		return err
	}
	floorH, err := measureFloor(ctx, cs, bs, samples)
	if err != nil {
		return fmt.Errorf("floor: %w", err)
	}
	if err := readServersInto(); err != nil {
		return err
	}
	cpu0 := cpuTime()
	r0 := readReconciles(full[0], full[1])
	exportsH, err := measureExports(ctx, a, b, bs, samples)
	if err != nil {
		return fmt.Errorf("export-to-imported: %w", err)
	}
	r1 := readReconciles(full[0], full[1])
	if err := readServersInto(); err != nil {
		return err
	}
	endpointsH, err := measureEndpoints(ctx, a, b, bs, samples)
	if err != nil {
		return fmt.Errorf("endpoint-change-to-imported: %w", err)
	}
	r2 := readReconciles(full[0], full[1])
	if err := readServersInto(); err != nil {
		return err
	}
	cpu := cpuTime() - cpu0
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)

	fmt.Printf("load average at the start of the measurements: %s\n", load0)
	fmt.Printf("conditions: %d samples each, sequential with %v before each, from member a to member b; broker + 3 members on loopback (real kube-apiserver %s, etcd, KWOK), 3 agents in this process; %d CPUs\n",
		samples, gap, "v1.37.2", runtime.NumCPU())
	fmt.Printf("| measurement | p50 | p99 | p50 / floor p50 | p99 / floor p99 |\n|---|---|---|---|---|\n")
	floor := floorH.total
	row := func(name string, d []time.Duration) {
		fmt.Printf("| %s | %v | %v | %.2f | %.2f |\n", name, pct(d, 50), pct(d, 99),
			float64(pct(d, 50))/float64(pct(floor, 50)), float64(pct(d, 99))/float64(pct(floor, 99)))
	}
	const exportRow, endpointRow = "export-to-imported (ServiceExport in A -> ServiceImport in B)", "endpoint-change-to-imported (EndpointSlice in A -> MCS slice in B)"
	row("floor: bare write, two watch hops (A -> broker -> B)", floor)
	row(exportRow, exportsH.total)
	row(endpointRow, endpointsH.total)
	printBreakdown(floorH, map[string]hops{"floor": floorH, exportRow: exportsH, endpointRow: endpointsH}, []string{"floor", exportRow, endpointRow})
	fmt.Printf("\n| agents' reconciles during | a's exports: count, mean | b's imports: count, mean |\n|---|---|---|\n")
	r1.sub(r0).row(exportRow)
	r2.sub(r1).row(endpointRow)
	printServers(samples, []string{"floor", exportRow, endpointRow}, readings)
	fmt.Printf("load average at the end: %s\n", loadavg())
	fmt.Printf("process CPU during the agent measurements: %v (both agents, the clients and the watches); Go heap in use at the end: %d MiB\n",
		cpu.Round(time.Millisecond), ms.HeapInuse>>20)
	if services > 0 {
		return measureScale(ctx, cs, services)
	}
	return nil
}

// seen records when each name was first seen by a watch.
type seen struct {
	mu    sync.Mutex
	at    map[string]time.Time
	match func(obj any) (string, bool)
}

func newSeen(match func(obj any) (string, bool)) *seen {
	return &seen{at: map[string]time.Time{}, match: match}
}

func (s *seen) handle(obj any) {
	if key, ok := s.match(obj); ok {
		s.mu.Lock()
		if _, dup := s.at[key]; !dup {
			s.at[key] = time.Now()
		}
		s.mu.Unlock()
	}
}

func (s *seen) handlers() cache.ResourceEventHandlerFuncs {
	return cache.ResourceEventHandlerFuncs{AddFunc: s.handle, UpdateFunc: func(_, o any) { s.handle(o) }}
}

// wait returns when key was seen, polling the record.
func (s *seen) wait(ctx context.Context, key string) (time.Time, error) {
	for {
		s.mu.Lock()
		t, ok := s.at[key]
		s.mu.Unlock()
		if ok {
			return t, nil
		}
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("waiting for %s: %w", key, ctx.Err())
		case <-time.After(200 * time.Microsecond):
		}
	}
}

// measureFloor relays ConfigMaps A -> broker -> B with one watch and one
// write per hop, the least any controller could do.
func measureFloor(ctx context.Context, cs *cluster.Clusterset, bs *brokerSeen, samples int) (hops, error) {
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

	var out hops
	for i := range samples {
		name := fmt.Sprintf("floor-%d", i)
		time.Sleep(gap)
		start := time.Now()
		if _, err := a.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"floor": "yes"}}}, metav1.CreateOptions{}); err != nil {
			return hops{}, err
		}
		t, err := s.wait(ctx, name)
		if err != nil {
			return hops{}, err
		}
		mid, err := bs.floor.wait(ctx, name)
		if err != nil {
			return hops{}, err
		}
		out.add(start, mid, t)
	}
	return out, nil
}

// measureExports times ServiceExport creation in A until the ServiceImport
// appears in B, for Services that already exist.
func measureExports(ctx context.Context, a, b *cluster.Cluster, bs *brokerSeen, samples int) (hops, error) {
	mcsA, err := mcsclient.NewForConfig(a.Config)
	if err != nil {
		return hops{}, err
	}
	mcsB, err := mcsclient.NewForConfig(b.Config)
	if err != nil {
		return hops{}, err
	}
	s := newSeen(func(o any) (string, bool) { return o.(*mcsv1beta1.ServiceImport).Name, true })
	f := mcsinformers.NewSharedInformerFactoryWithOptions(mcsB, 0, mcsinformers.WithNamespace(ns))
	f.Multicluster().V1beta1().ServiceImports().Informer().AddEventHandler(s.handlers())
	f.Start(ctx.Done())
	f.WaitForCacheSync(ctx.Done())
	var out hops
	for i := range samples {
		name := fmt.Sprintf("svc-%d", i)
		if _, err := a.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
		}, metav1.CreateOptions{}); err != nil {
			return hops{}, err
		}
		time.Sleep(gap)
		start := time.Now()
		if _, err := mcsA.MulticlusterV1beta1().ServiceExports(ns).Create(ctx, &mcsv1beta1.ServiceExport{
			ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
			return hops{}, err
		}
		t, err := s.wait(ctx, name)
		if err != nil {
			return hops{}, err
		}
		mid, err := bs.exports.wait(ctx, name)
		if err != nil {
			return hops{}, err
		}
		out.add(start, mid, t)
	}
	return out, nil
}

// measureEndpoints changes the address in a hand-written EndpointSlice of
// an exported selector-less Service in A and times until B's MCS slice
// lists the new address.
func measureEndpoints(ctx context.Context, a, b *cluster.Cluster, bs *brokerSeen, samples int) (hops, error) {
	mcsA, err := mcsclient.NewForConfig(a.Config)
	if err != nil {
		return hops{}, err
	}
	const svc = "endpoints"
	if _, err := a.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: svc},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
	}, metav1.CreateOptions{}); err != nil {
		return hops{}, err
	}
	port, pname, ready := int32(8080), "http", true
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: svc + "-bench", Labels: map[string]string{
			discoveryv1.LabelServiceName: svc, discoveryv1.LabelManagedBy: "bench.isthmus.dev"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.241.100.0"}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
		Ports:       []discoveryv1.EndpointPort{{Name: &pname, Port: &port}},
	}
	created, err := a.Client.DiscoveryV1().EndpointSlices(ns).Create(ctx, slice, metav1.CreateOptions{})
	if err != nil {
		return hops{}, err
	}
	if _, err := mcsA.MulticlusterV1beta1().ServiceExports(ns).Create(ctx, &mcsv1beta1.ServiceExport{
		ObjectMeta: metav1.ObjectMeta{Name: svc}}, metav1.CreateOptions{}); err != nil {
		return hops{}, err
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
		return hops{}, err
	}
	var out hops
	for i := range samples {
		addr := fmt.Sprintf("10.241.%d.%d", 101+i/250, 1+i%250)
		created.Endpoints[0].Addresses = []string{addr}
		time.Sleep(gap)
		start := time.Now()
		updated, err := a.Client.DiscoveryV1().EndpointSlices(ns).Update(ctx, created, metav1.UpdateOptions{})
		if err != nil {
			return hops{}, err
		}
		created = updated
		t, err := s.wait(ctx, addr)
		if err != nil {
			return hops{}, err
		}
		mid, err := bs.slices.wait(ctx, addr)
		if err != nil {
			return hops{}, err
		}
		out.add(start, mid, t)
	}
	return out, nil
}

// reconciles are a's export and b's import reconciles so far, from the
// agents' own histograms: how many and the seconds they took, so that a
// half of the breakdown splits into the reconcile (its writes included)
// and the watch and queue around it.
type reconciles struct{ exports, exportSec, imports, importSec float64 }

func readReconciles(a, b *fleet.Member) reconciles {
	const h = "isthmus_agent_reconcile_seconds"
	return reconciles{
		a.Metric(h, "controller", "export"), a.Seconds(h, "controller", "export"),
		b.Metric(h, "controller", "import"), b.Seconds(h, "controller", "import"),
	}
}

func (r reconciles) sub(o reconciles) reconciles {
	return reconciles{r.exports - o.exports, r.exportSec - o.exportSec, r.imports - o.imports, r.importSec - o.importSec}
}

func (r reconciles) row(name string) {
	mean := func(sec, n float64) time.Duration {
		return time.Duration(sec / max(n, 1) * float64(time.Second)).Round(10 * time.Microsecond)
	}
	fmt.Printf("| %s | %.0f, %v | %.0f, %v |\n", name, r.exports, mean(r.exportSec, r.exports), r.imports, mean(r.importSec, r.imports))
}

func pct(d []time.Duration, p int) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s)*p+99)/100 - 1
	return s[max(i, 0)].Round(10 * time.Microsecond)
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}
