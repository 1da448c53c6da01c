// Command scale measures one broker serving a large clusterset: N
// simulated members that behave towards the broker like agents (each joined
// with its own identity, a Cluster record, K exports with EndpointSlices,
// its Lease renewed every third of the Lease duration), and three full
// members a, b and c with real agents importing everything. The broker and
// the full members are real kube-apiservers and etcd with admission on
// (test/cluster); the agents run in this process, the simulated members in
// a child process, so this process's CPU and heap are the three agents'.
//
//	go run ./bench/scale -members 100
//
// It prints, as markdown: the setup, the broker's write rate and the
// apiserver's and etcd's CPU and memory at idle, the agents' CPU, heap and
// import reconciles at idle and during churn, a new export in a → imported
// in b and c (p50/p99) and an endpoint change in a → the MCS slices in b
// and c under the members' heartbeats, a's resolver (`isthmus dns` in a
// process of its own) on those imports: ready, heap and RSS, agent restart →
// synced, and a member dying → withdrawn in every full member (each one's
// time and its import reconciles meanwhile), with the broker writes that
// caused.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/isthmus-dev/isthmus/bench/internal/fleet"
	"github.com/isthmus-dev/isthmus/mcs/agent"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/test/cluster"
)

// simNamespace holds the simulated members' exports: every member exports
// services s0..s<K-1> there, so each full member imports K services with N
// clusters behind each, and N×K EndpointSlices.
const simNamespace = "scale"

// benchNamespace holds the full members' own exports of the propagation
// samples.
const benchNamespace = "bench"

type config struct {
	members, exports, samples int
	idle, lease, withdraw     time.Duration
	// cpuProfile, when set, receives the broker apiserver's CPU profile
	// over the idle window; withdrawProfile this process's (the full agents
	// run in it) and a's apiserver's over a dead member's withdrawal.
	cpuProfile, withdrawProfile string
}

func main() {
	var c config
	role := flag.String("role", "", "internal: \"sim\" runs the simulated members (the benchmark starts it)")
	kubeconfig := flag.String("kubeconfig", "", "internal: the broker's admin kubeconfig, for -role sim")
	flag.IntVar(&c.members, "members", 100, "simulated members N")
	flag.IntVar(&c.exports, "exports", 10, "exports per simulated member K")
	flag.IntVar(&c.samples, "samples", 20, "new-export samples")
	flag.DurationVar(&c.idle, "idle", time.Minute, "idle measurement window")
	flag.DurationVar(&c.lease, "lease", 30*time.Second, "Lease duration of every member (the default; renewed every third)")
	flag.StringVar(&c.cpuProfile, "cpuprofile", "", "write the broker kube-apiserver's CPU profile over the idle window to this file (go tool pprof reads it)")
	flag.StringVar(&c.withdrawProfile, "withdrawprofile", "", "from 2 s before a dead member is due to be withdrawn: write this process's CPU profile (the three full agents run in it) and execution trace until it is, to FILE.agents and FILE.trace, and a's kube-apiserver's CPU profile over 12 s to FILE.apiserver-a")
	flag.DurationVar(&c.withdraw, "withdraw-after", time.Minute, "the full agents' --withdraw-after (the default is 5 min; shorter keeps the run short)")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, stop := signalContext()
	defer stop()
	var err error
	if *role == "sim" {
		err = runSims(ctx, log, *kubeconfig, c.members, c.exports, c.lease)
	} else {
		err = run(ctx, log, c)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "scale:", err)
		stop()
		os.Exit(1)
	}
}

func signalContext() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	sigs := make(chan os.Signal, 1)
	go func() {
		select {
		case <-sigs:
			cancel()
		case <-ctx.Done():
		}
	}()
	signalNotify(sigs)
	return ctx, cancel
}

func run(ctx context.Context, log *slog.Logger, c config) error {
	began := time.Now()
	cs, err := cluster.New(ctx, cluster.Options{Broker: true, Members: 3, Log: log, Profiling: c.cpuProfile != "" || c.withdrawProfile != ""})
	if err != nil {
		return err
	}
	defer cs.Stop()
	agentCtx, stopAgents := context.WithCancel(ctx)
	defer stopAgents()
	full, err := fleet.JoinAndRun(agentCtx, cs, log, func(cfg *agent.Config) {
		cfg.LeaseDuration, cfg.WithdrawAfter = c.lease, c.withdraw
	})
	if err != nil {
		return err
	}
	for _, m := range cs.Members {
		for _, ns := range []string{simNamespace, benchNamespace} {
			if _, err := m.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
				return err
			}
		}
	}
	broker, err := newBrokerProbe(cs)
	if err != nil {
		return err
	}
	if _, err := broker.sample(); err != nil {
		return err
	}
	fmt.Printf("### N = %d simulated members × K = %d exports, 3 full members (%s)\n\n", c.members, c.exports, time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Printf("Lease %v (renewed every %v), full agents' withdraw-after %v; %d CPUs, load at start %s; clusterset up in %v.\n\n",
		c.lease, c.lease/3, c.withdraw, runtime.NumCPU(), loadavg(), time.Since(began).Round(time.Second))

	// The simulated members.
	setup0, err := broker.sample()
	if err != nil {
		return err
	}
	simStart := time.Now()
	sim := exec.CommandContext(ctx, os.Args[0], "-role", "sim", "-kubeconfig", cs.Broker.Kubeconfig,
		"-members", fmt.Sprint(c.members), "-exports", fmt.Sprint(c.exports), "-lease", c.lease.String())
	sim.Stderr = os.Stderr
	sim.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	simIn, err := sim.StdinPipe()
	if err != nil {
		return err
	}
	simOut, err := sim.StdoutPipe()
	if err != nil {
		return err
	}
	if err := sim.Start(); err != nil {
		return err
	}
	defer func() { _ = sim.Process.Kill(); _ = sim.Wait() }()
	if err := waitLine(ctx, simOut, "ready"); err != nil {
		return fmt.Errorf("simulated members: %w", err)
	}
	joined := time.Since(simStart)
	// Every full member imports every simulated export.
	if err := waitImported(ctx, full, simNamespace, c.exports, c.members); err != nil {
		return err
	}
	imported := time.Since(simStart)
	setup1, err := broker.sample()
	if err != nil {
		return err
	}
	fmt.Printf("| setup | time |\n|---|---|\n| %d members joined, records and %d exports written (8 writers) | %v |\n| … and every export imported in a, b and c (%d clusters behind each of %d imports) | %v |\n\n",
		c.members, c.members*c.exports, joined.Round(100*time.Millisecond), c.members, c.exports, imported.Round(100*time.Millisecond))
	setupWrites, setupCPU := setup1.writes-setup0.writes, setup1.apiCPU-setup0.apiCPU
	fmt.Printf("Broker during setup: %.0f writes (%s); apiserver CPU %v (%.1f ms per write), etcd CPU %v. %s\n\n",
		setupWrites, setup1.diff(setup0), setupCPU.Round(time.Second), 1000*setupCPU.Seconds()/max(setupWrites, 1),
		(setup1.dbCPU - setup0.dbCPU).Round(time.Second), setup1.admissionCost(setup0))
	settle(ctx, full)
	if err := measureResolver(ctx, full[0].Cluster.Kubeconfig, c.exports, c.members); err != nil {
		return err
	}
	settle(ctx, full)

	// Idle.
	profiled := make(chan error, 1)
	if c.cpuProfile != "" {
		go func() { profiled <- profileBroker(ctx, cs, c.idle-time.Second, c.cpuProfile) }()
	} else {
		profiled <- nil
	}
	idle, err := measureWindow(ctx, broker, full, c.idle, nil)
	if err != nil {
		return err
	}
	if err := <-profiled; err != nil {
		return fmt.Errorf("profiling the broker: %w", err)
	}
	// Churn: new exports from a, timed until imported in b and c.
	var lat, epLat []time.Duration
	churn, err := measureWindow(ctx, broker, full, 0, func() error {
		if lat, err = measureExports(ctx, full, c.samples); err != nil {
			return err
		}
		epLat, err = measureEndpointChanges(ctx, full, c.samples)
		return err
	})
	if err != nil {
		return err
	}
	fmt.Printf("| window | length | broker writes/s (by resource) | apiserver CPU | etcd CPU | apiserver RSS | etcd RSS | agents' CPU (3 agents) | Go heap in use (3 agents) | import reconciles per agent per minute |\n|---|---|---|---|---|---|---|---|---|---|\n")
	idle.row("idle", c)
	churn.row(fmt.Sprintf("churn (%d new exports from a, then %d endpoint changes)", c.samples, c.samples), c)
	fmt.Printf("\nExpected idle broker write rate with one Lease renewal per member per period: %.1f/s (%d members + 3 full, every %v).\n\n",
		float64(c.members+3)/(c.lease/3).Seconds(), c.members, c.lease/3)
	fmt.Printf("| new export in a → ServiceImport in b and c | p50 | p99 | max |\n|---|---|---|---|\n| %d samples, sequential | %v | %v | %v |\n\n",
		len(lat), pct(lat, 50), pct(lat, 99), pct(lat, 100))
	fmt.Printf("| endpoint change in a → the MCS slices in b and c | p50 | p99 | max |\n|---|---|---|---|\n| %d samples, sequential | %v | %v | %v |\n\n",
		len(epLat), pct(epLat, 50), pct(epLat, 99), pct(epLat, 100))

	// Agent restart.
	a := full[0]
	restartAt := time.Now()
	if err := a.Start(agentCtx, log); err != nil {
		return err
	}
	ready := time.Since(restartAt)
	want := float64(c.exports + c.samples)
	for a.Metric("isthmus_agent_reconcile_seconds", "controller", "import") < want || a.Metric("isthmus_agent_queue_depth", "controller", "import") > 0 {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(10 * time.Millisecond)
	}
	synced := time.Since(restartAt)
	writes := a.Metric("isthmus_agent_writes_total") - a.Metric("isthmus_agent_writes_total", "target", "broker-lease")
	fmt.Printf("| a's agent restarted | time |\n|---|---|\n| → ready (informers synced with %d broker records, heartbeat renewed) | %v |\n| → every import reconciled once, queue empty | %v (writes other than the heartbeat: %.0f%s) |\n\n",
		c.members*(2*c.exports+2), ready.Round(time.Millisecond), synced.Round(time.Millisecond), writes, writesBy(a))

	// A member dies.
	before, err := broker.sample()
	if err != nil {
		return err
	}
	diedAt := time.Now()
	if _, err := fmt.Fprintln(simIn, "stop", simName(0)); err != nil {
		return err
	}
	// The agents count withdraw-after from the last renewal they saw, which
	// came up to one renewal period before the stop: the target is judged
	// from that renewal, read back from the broker once a renewal in
	// flight at the stop has landed.
	time.Sleep(time.Second)
	dead, err := cs.Broker.Client.CoordinationV1().Leases(brokerv1.DefaultBrokerNamespace).Get(ctx, brokerv1.LeaseName(simName(0)), metav1.GetOptions{})
	if err != nil || dead.Spec.RenewTime == nil {
		return fmt.Errorf("reading %s's Lease back: %v", simName(0), err)
	}
	renewed := dead.Spec.RenewTime.Time
	// What the agents do from just before the judgement is due until the
	// last import is rewritten: their import reconciles, and (-withdrawprofile)
	// where this process's and a's apiserver's CPU goes meanwhile.
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(time.Until(renewed.Add(c.withdraw - 2*time.Second))):
	}
	type reconciles struct{ n, secs float64 }
	snapshot := func() []reconciles {
		var out []reconciles
		for _, m := range full {
			out = append(out, reconciles{m.Metric("isthmus_agent_reconcile_seconds", "controller", "import"), m.Seconds("isthmus_agent_reconcile_seconds", "controller", "import")})
		}
		return out
	}
	due := snapshot()
	stopProfile := func() {}
	profiledA := make(chan error, 1)
	if c.withdrawProfile != "" {
		if stopProfile, err = profileSelf(c.withdrawProfile); err != nil {
			return err
		}
		go func() {
			profiledA <- profileAPIServer(ctx, full[0].Cluster.Client, 12*time.Second, c.withdrawProfile+".apiserver-a")
		}()
	} else {
		profiledA <- nil
	}
	withdrawn, err := waitWithdrawn(ctx, full, simName(0), c.exports)
	stopProfile()
	if err != nil {
		return err
	}
	if err := <-profiledA; err != nil {
		return fmt.Errorf("profiling a's apiserver: %w", err)
	}
	done := snapshot()
	withdrawnAt := slices.MaxFunc(withdrawn, time.Time.Compare)
	took := withdrawnAt.Sub(diedAt)
	after, err := broker.sample()
	if err != nil {
		return err
	}
	sinceRenewal := withdrawnAt.Sub(renewed)
	total := after.writes - before.writes
	renewals := float64(c.members+2) / (c.lease / 3).Seconds() * took.Seconds()
	fmt.Printf("| %s stops renewing its Lease | measured |\n|---|---|\n| its last renewal → withdrawn from every import in a, b and c | %v: withdraw-after %v **+ %v** |\n| … from the stop (its last renewal came %v before) | %v |\n| broker writes meanwhile | %.0f, of which about %.0f the other members' renewals: **%.0f caused** (%s) |\n\n",
		simName(0), sinceRenewal.Round(100*time.Millisecond), c.withdraw, (sinceRenewal - c.withdraw).Round(100*time.Millisecond),
		diedAt.Sub(renewed).Round(100*time.Millisecond), took.Round(100*time.Millisecond), total, renewals, total-renewals, after.diff(before))
	fmt.Printf("| full member | withdrawn after its last renewal | import reconciles from 2 s before withdraw-after until then | their time, summed |\n|---|---|---|---|\n")
	for i, m := range full {
		fmt.Printf("| %s | withdraw-after + %v | %.0f | %v |\n", m.ID, (withdrawn[i].Sub(renewed) - c.withdraw).Round(100*time.Millisecond),
			done[i].n-due[i].n, time.Duration((done[i].secs-due[i].secs)*float64(time.Second)).Round(time.Millisecond))
	}
	fmt.Println()
	fmt.Printf("Load at the end: %s.\n", loadavg())
	return nil
}

// waitLine reads r until a line equal to want.
func waitLine(ctx context.Context, r io.Reader, want string) error {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if sc.Text() == want {
			go func() { _, _ = io.Copy(io.Discard, r) }()
			return nil
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("ended before %q", want)
}

// waitImported waits until every full member imports K services in ns,
// each listing n+ clusters.
func waitImported(ctx context.Context, full []*fleet.Member, ns string, k, n int) error {
	for _, m := range full {
		mc, err := mcsclient.NewForConfig(m.Cluster.Config)
		if err != nil {
			return err
		}
		for {
			l, err := mc.MulticlusterV1beta1().ServiceImports(ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				return err
			}
			done := len(l.Items) == k
			for _, si := range l.Items {
				done = done && len(si.Status.Clusters) >= n
			}
			if done {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("waiting for %s to import %d services from %d clusters: %w", m.ID, k, n, ctx.Err())
			case <-time.After(500 * time.Millisecond):
			}
		}
	}
	return nil
}

// waitWithdrawn waits until no import in the full members lists cluster,
// and says when each stopped listing it. It watches (one list, then the
// changes) rather than polls: listing K imports of N clusters every 100 ms
// in each member cost the agents' process and each member's apiserver a
// quarter of their CPU in the window it measures (at N = 1,000).
func waitWithdrawn(ctx context.Context, full []*fleet.Member, cluster string, k int) ([]time.Time, error) {
	at := make([]time.Time, len(full))
	errs := make([]error, len(full))
	var wg sync.WaitGroup
	for i, m := range full {
		wg.Go(func() {
			mc, err := mcsclient.NewForConfig(m.Cluster.Config)
			if err != nil {
				errs[i] = err
				return
			}
			api := mc.MulticlusterV1beta1().ServiceImports(simNamespace)
			lw := &cache.ListWatch{
				ListWithContextFunc:  func(ctx context.Context, o metav1.ListOptions) (kruntime.Object, error) { return api.List(ctx, o) },
				WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) { return api.Watch(ctx, o) },
			}
			listing := map[string]bool{} // import → lists cluster
			_, err = watchtools.UntilWithSync(ctx, lw, &mcsv1beta1.ServiceImport{}, nil, func(ev watch.Event) (bool, error) {
				si, ok := ev.Object.(*mcsv1beta1.ServiceImport)
				if !ok {
					return false, nil
				}
				if ev.Type == watch.Deleted {
					delete(listing, si.Name)
				} else {
					listing[si.Name] = slices.ContainsFunc(si.Status.Clusters, func(c mcsv1beta1.ClusterStatus) bool { return c.Cluster == cluster })
				}
				for _, listed := range listing {
					if listed {
						return false, nil
					}
				}
				return len(listing) == k, nil
			})
			if err != nil {
				errs[i] = fmt.Errorf("waiting for %s to be withdrawn in %s: %w", cluster, m.ID, err)
				return
			}
			at[i] = time.Now()
		})
	}
	wg.Wait()
	return at, errors.Join(errs...)
}

// settle waits until no agent has reconciled an import for 3 s, or a
// minute at most.
func settle(ctx context.Context, full []*fleet.Member) {
	count := func() float64 {
		n := 0.0
		for _, m := range full {
			n += m.Metric("isthmus_agent_reconcile_seconds", "controller", "import")
		}
		return n
	}
	for last, deadline := count(), time.Now().Add(time.Minute); ctx.Err() == nil && time.Now().Before(deadline); {
		time.Sleep(3 * time.Second)
		n := count()
		if n == last {
			return
		}
		last = n
	}
}

// measureExports creates a Service and its ServiceExport in a, one at a
// time, and times each until b and c both hold its ServiceImport.
func measureExports(ctx context.Context, full []*fleet.Member, samples int) ([]time.Duration, error) {
	a := full[0].Cluster
	mcsA, err := mcsclient.NewForConfig(a.Config)
	if err != nil {
		return nil, err
	}
	watchers := []*firstSeen{}
	for _, m := range full[1:] {
		w, err := watchImports(ctx, m.Cluster.Config, benchNamespace)
		if err != nil {
			return nil, err
		}
		watchers = append(watchers, w)
	}
	var out []time.Duration
	for i := range samples {
		name := fmt.Sprintf("p%d", i)
		if _, err := a.Client.CoreV1().Services(benchNamespace).Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
		}, metav1.CreateOptions{}); err != nil {
			return nil, err
		}
		start := time.Now()
		if _, err := mcsA.MulticlusterV1beta1().ServiceExports(benchNamespace).Create(ctx, &mcsv1beta1.ServiceExport{
			ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
			return nil, err
		}
		last, err := seenByAll(ctx, watchers, name)
		if err != nil {
			return nil, err
		}
		out = append(out, last.Sub(start))
	}
	return out, nil
}

func pct(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s)*p+99)/100 - 1
	return s[max(i, 0)].Round(100 * time.Microsecond)
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

// profileBroker writes the broker kube-apiserver's CPU profile over d.
func profileBroker(ctx context.Context, cs *cluster.Clusterset, d time.Duration, path string) error {
	return profileAPIServer(ctx, cs.Broker.Client, d, path)
}

// profileAPIServer writes a kube-apiserver's CPU profile over d.
func profileAPIServer(ctx context.Context, client kubernetes.Interface, d time.Duration, path string) error {
	raw, err := client.Discovery().RESTClient().Get().AbsPath("/debug/pprof/profile").
		Param("seconds", fmt.Sprint(max(int(d.Seconds()), 1))).Timeout(d + time.Minute).Do(ctx).Raw()
	if err != nil {
		return err
	}
	return os.WriteFile(path, raw, 0o644)
}

// profileSelf starts this process's CPU profile into path+".agents" and
// its execution trace into path+".trace" (where goroutines wait: `go tool
// trace -pprof=net` or `-pprof=sched` reads it); the function it returns
// stops both and closes the files.
func profileSelf(path string) (stop func(), err error) {
	prof, err := os.Create(path + ".agents")
	if err != nil {
		return nil, err
	}
	tr, err := os.Create(path + ".trace")
	if err != nil {
		_ = prof.Close()
		return nil, err
	}
	if err := pprof.StartCPUProfile(prof); err != nil {
		_, _ = prof.Close(), tr.Close()
		return nil, err
	}
	if err := trace.Start(tr); err != nil {
		pprof.StopCPUProfile()
		_, _ = prof.Close(), tr.Close()
		return nil, err
	}
	return func() { trace.Stop(); pprof.StopCPUProfile(); _, _ = prof.Close(), tr.Close() }, nil
}

// writesBy lists an agent's writes other than its heartbeat by target and
// verb, as ": local/apply 3, broker/update 1", or nothing when there are none.
func writesBy(m *fleet.Member) string {
	families, err := m.Registry.Gather()
	if err != nil {
		return ""
	}
	var parts []string
	for _, f := range families {
		if f.GetName() != "isthmus_agent_writes_total" {
			continue
		}
		for _, s := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range s.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["target"] != "broker-lease" && s.GetCounter().GetValue() > 0 {
				parts = append(parts, fmt.Sprintf("%s/%s %.0f", labels["target"], labels["verb"], s.GetCounter().GetValue()))
			}
		}
	}
	if len(parts) == 0 {
		return ""
	}
	slices.Sort(parts)
	return ": " + strings.Join(parts, ", ")
}
