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
// It prints p50/p99 of each measurement and the ratio to the floor, the
// samples of the three paths taken in turn (interleaved) so that the floor
// and the agents meet the same machine, and what each sample cost: the
// apiservers' writes, the agents' reconciles and every process's CPU.
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
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/isthmus-dev/isthmus/bench/internal/fleet"
	"github.com/isthmus-dev/isthmus/bench/internal/procstat"
	"github.com/isthmus-dev/isthmus/test/cluster"
)

const ns = "bench"

// gap is the pause before each sample (-gap): one change at a time is the
// latency a user sees; back to back, each sample also waits on the
// previous one's follow-up writes.
var gap time.Duration

// phased takes all of one path's samples before the next path's (-phased).
var phased bool

func main() {
	samples := flag.Int("samples", 200, "samples per measurement")
	services := flag.Int("services", 0, "then export this many services × 10 endpoints from each of the three members and report the agents' CPU and memory")
	flag.DurationVar(&gap, "gap", 250*time.Millisecond, "pause before each sample, so that it starts after the previous one's follow-up work (the source's status, the other members' imports) has settled; 0 runs the samples back to back")
	members := flag.Int("members", 3, "member clusters (2 or 3): with 2, no third member imports each change on the same CPUs; a diagnosis of how much the clusterset's own fan-out costs the path, not the figure to report")
	flag.BoolVar(&phased, "phased", false, "take all of one path's samples before the next path's (the floor's first), instead of interleaving them")
	writes := flag.Bool("writes", false, "instead: time each kind of write the path makes, alone (no agent running)")
	flag.Parse()
	if *members != 2 && *members != 3 {
		fmt.Fprintln(os.Stderr, "mcslatency: -members is 2 or 3")
		os.Exit(2)
	}
	measureAll := func() error { return run(*samples, *services, *members) }
	if *writes {
		measureAll = func() error { return measureWrites(*samples) }
	}
	if err := measureAll(); err != nil {
		fmt.Fprintln(os.Stderr, "mcslatency:", err)
		os.Exit(1)
	}
}

func run(samples, services, members int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cs, err := cluster.New(ctx, cluster.Options{Broker: true, Members: members, Log: log})
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

	bs, err := watchBroker(ctx, cs.Broker)
	if err != nil {
		return err
	}
	const (
		floorRow    = "floor: bare write, two watch hops (A -> broker -> B)"
		exportRow   = "export-to-imported (ServiceExport in A -> ServiceImport in B)"
		endpointRow = "endpoint-change-to-imported (EndpointSlice in A -> MCS slice in B)"
	)
	exports, err := setupExports(ctx, a, b, bs)
	if err != nil {
		return fmt.Errorf("export-to-imported: %w", err)
	}
	endpoints, err := setupEndpoints(ctx, a, b, bs)
	if err != nil {
		return fmt.Errorf("endpoint-change-to-imported: %w", err)
	}
	paths := []*path{
		{name: floorRow, sample: setupFloor(ctx, cs, bs)},
		{name: exportRow, sample: exports},
		{name: endpointRow, sample: endpoints},
	}
	load0 := loadavg()
	cpu0 := procstat.Self()
	if err := measure(ctx, cs, full, paths, samples); err != nil {
		return err
	}
	cpu := procstat.Self() - cpu0
	var mem runtime.MemStats
	runtime.ReadMemStats(&mem)

	order := "interleaved: round i takes the i-th sample of each path in turn"
	if phased {
		order = "phased: all of one path's samples, then the next path's"
	}
	fmt.Printf("load average at the start of the measurements: %s\n", load0)
	fmt.Printf("conditions: %d samples each, %s, sequential with %v before each, from member a to member b; broker + %d members on loopback (real kube-apiserver %s, etcd, KWOK), %[4]d agents in this process; %[6]d CPUs\n",
		samples, order, gap, members, "v1.37.2", runtime.NumCPU())
	fmt.Printf("| measurement | p50 | p99 | p50 / floor p50 | p99 / floor p99 |\n|---|---|---|---|---|\n")
	floor := paths[0].h.total
	for _, p := range paths {
		d := p.h.total
		fmt.Printf("| %s | %v | %v | %.2f | %.2f |\n", p.name, pct(d, 50), pct(d, 99),
			float64(pct(d, 50))/float64(pct(floor, 50)), float64(pct(d, 99))/float64(pct(floor, 99)))
	}
	printBreakdown(paths)
	fmt.Printf("\n| agents' reconciles per path | a's exports: count, mean | b's imports: count, mean |\n|---|---|---|\n")
	for _, p := range paths {
		p.use.rec.row(p.name)
	}
	printServers(paths)
	printCPU(paths)
	fmt.Printf("load average at the end: %s\n", loadavg())
	fmt.Printf("this process's CPU over the measurements: %v (the agents, the clients and the watches, the bench's reads between samples); Go heap in use at the end: %d MiB\n",
		cpu.Round(time.Millisecond), mem.HeapInuse>>20)
	if services > 0 {
		return measureScale(ctx, cs, services)
	}
	return nil
}

// path is one measured path, its samples and what they cost.
type path struct {
	name   string
	sample sampler
	h      hops
	use    usage
}

// measure takes each path's samples. Interleaved (the default), round i
// takes the i-th sample of each path in turn, so that whatever changes on
// the machine over a run (a compaction, the apiservers' caches warming,
// another tenant) falls on the floor and the agents' paths alike; until
// 2026-12-07 the bench took all of the floor's samples first (-phased).
// After each sample, half a gap lets its follow-up work settle before its
// cost is read (account.go).
func measure(ctx context.Context, cs *cluster.Clusterset, full []*fleet.Member, paths []*path, samples int) error {
	ac, err := newAccountant(ctx, cs, full)
	if err != nil {
		return err
	}
	one := func(p *path, i int) error {
		start, mid, end, err := p.sample(ctx, i)
		if err != nil {
			return fmt.Errorf("%s, sample %d: %w", p.name, i, err)
		}
		p.h.add(start, mid, end)
		time.Sleep(gap / 2)
		u, err := ac.next(ctx)
		p.use = p.use.add(u)
		return err
	}
	if phased {
		for _, p := range paths {
			for i := range samples {
				if err := one(p, i); err != nil {
					return err
				}
			}
		}
		return nil
	}
	for i := range samples {
		for _, p := range paths {
			if err := one(p, i); err != nil {
				return err
			}
		}
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

func (r reconciles) add(o reconciles) reconciles {
	return reconciles{r.exports + o.exports, r.exportSec + o.exportSec, r.imports + o.imports, r.importSec + o.importSec}
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

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}
