package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"
	mcsinformers "sigs.k8s.io/mcs-api/pkg/client/informers/externalversions"

	"github.com/isthmus-dev/isthmus/bench/internal/fleet"
	"github.com/isthmus-dev/isthmus/bench/internal/promtext"
	"github.com/isthmus-dev/isthmus/test/cluster"
)

func signalNotify(c chan os.Signal) { signal.Notify(c, os.Interrupt, syscall.SIGTERM) }

// brokerProbe reads the broker apiserver's request counters and the CPU
// and memory of its kube-apiserver and etcd processes.
type brokerProbe struct {
	rest          rest.Interface
	apiserver, db int // pids
}

func newBrokerProbe(cs *cluster.Clusterset) (*brokerProbe, error) {
	p := &brokerProbe{}
	for _, pid := range cs.PIDs() {
		cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		args := strings.Split(string(cmd), "\x00")
		switch bin := filepath.Base(args[0]); {
		case bin == "kube-apiserver" && strings.Contains(string(cmd), filepath.Join(cs.Dir, "broker")+"/"):
			p.apiserver = pid
		case bin == "etcd" && strings.Contains(string(cmd), "etcd-broker"):
			p.db = pid
		}
	}
	if p.apiserver == 0 || p.db == 0 {
		return nil, fmt.Errorf("broker processes not found (apiserver %d, etcd %d)", p.apiserver, p.db)
	}
	p.rest = cs.Broker.Client.Discovery().RESTClient()
	return p, nil
}

// snapshot is the broker's state at one moment.
type snapshot struct {
	at         time.Time
	writes     float64
	byResource map[string]float64
	apiCPU     time.Duration
	dbCPU      time.Duration
	apiRSS     int64
	dbRSS      int64
	// admission is seconds spent in each admission policy, checks the
	// number of evaluations.
	admission, checks map[string]float64
}

// admissionCost says, per policy, the evaluations and the time they took
// between two snapshots.
func (s snapshot) admissionCost(before snapshot) string {
	var parts []string
	for policy, sec := range s.admission {
		n := s.checks[policy] - before.checks[policy]
		if n == 0 {
			continue
		}
		d := sec - before.admission[policy]
		parts = append(parts, fmt.Sprintf("%s: %.0f checks, %.1f ms each", policy, n, 1000*d/n))
	}
	sort.Strings(parts)
	if len(parts) == 0 {
		return ""
	}
	return "Admission policies: " + strings.Join(parts, "; ") + "."
}

func (p *brokerProbe) sample() (snapshot, error) {
	s := snapshot{at: time.Now(), byResource: map[string]float64{}, admission: map[string]float64{}, checks: map[string]float64{}}
	fams, err := promtext.APIServer(context.Background(), p.rest)
	if err != nil {
		return s, fmt.Errorf("reading the broker's metrics: %w", err)
	}
	if f := fams["apiserver_request_total"]; f != nil {
		for _, m := range f.GetMetric() {
			_, res, write := promtext.Write(m)
			if !write {
				continue
			}
			s.writes += m.GetCounter().GetValue()
			s.byResource[res] += m.GetCounter().GetValue()
		}
	}
	// The admission policies' evaluation time, by policy: a policy bound
	// with a parameter per member is evaluated once per member per write.
	if f := fams["apiserver_validating_admission_policy_check_duration_seconds"]; f != nil {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "policy" {
					s.admission[l.GetValue()] += m.GetHistogram().GetSampleSum()
					s.checks[l.GetValue()] += float64(m.GetHistogram().GetSampleCount())
				}
			}
		}
	}
	s.apiCPU, s.apiRSS = procStat(p.apiserver)
	s.dbCPU, s.dbRSS = procStat(p.db)
	return s, nil
}

// diff names the resources written between two snapshots.
func (s snapshot) diff(before snapshot) string {
	type kv struct {
		k string
		v float64
	}
	var out []kv
	for k, v := range s.byResource {
		if d := v - before.byResource[k]; d > 0 {
			out = append(out, kv{k, d})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].v > out[j].v })
	var parts []string
	for _, e := range out {
		parts = append(parts, fmt.Sprintf("%s %.0f", e.k, e.v))
	}
	return strings.Join(parts, ", ")
}

// procStat is a process's CPU time (user + system) and resident memory.
func procStat(pid int) (time.Duration, int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0
	}
	// Fields after the command name, which is in parentheses.
	f := strings.Fields(string(b)[strings.LastIndexByte(string(b), ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	rss, _ := strconv.ParseInt(f[21], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond, rss * int64(os.Getpagesize())
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// window is what one measurement window saw.
type window struct {
	before, after snapshot
	agentCPU      time.Duration
	heap          uint64
	reconciles    float64 // import reconciles, all three agents
	length        time.Duration
	loadAtEnd     string
}

// measureWindow measures for d, or, when work is given, while it runs.
func measureWindow(ctx context.Context, p *brokerProbe, full []*fleet.Member, d time.Duration, work func() error) (window, error) {
	var w window
	rec := func() float64 {
		n := 0.0
		for _, m := range full {
			n += m.Metric("isthmus_agent_reconcile_seconds", "controller", "import")
		}
		return n
	}
	var err error
	if w.before, err = p.sample(); err != nil {
		return w, err
	}
	cpu0, r0 := selfCPU(), rec()
	if work != nil {
		if err := work(); err != nil {
			return w, err
		}
	} else {
		select {
		case <-ctx.Done():
			return w, ctx.Err()
		case <-time.After(d):
		}
	}
	w.agentCPU, w.reconciles = selfCPU()-cpu0, rec()-r0
	if w.after, err = p.sample(); err != nil {
		return w, err
	}
	w.length = w.after.at.Sub(w.before.at)
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	w.heap = ms.HeapInuse
	w.loadAtEnd = loadavg()
	return w, nil
}

func (w window) row(name string, c config) {
	secs := w.length.Seconds()
	pctOf := func(d time.Duration) string { return fmt.Sprintf("%.1f %%", 100*d.Seconds()/secs) }
	writes, api := w.after.writes-w.before.writes, w.after.apiCPU-w.before.apiCPU
	fmt.Printf("| %s | %v (load %s) | %.2f (%s) | %s (%.1f ms per write) | %s | %d MiB | %d MiB | %s | %d MiB | %.1f |\n",
		name, w.length.Round(100*time.Millisecond), w.loadAtEnd, writes/secs, w.after.diff(w.before),
		pctOf(api), 1000*api.Seconds()/max(writes, 1), pctOf(w.after.dbCPU-w.before.dbCPU), w.after.apiRSS>>20, w.after.dbRSS>>20,
		pctOf(w.agentCPU), w.heap>>20, w.reconciles/3/(secs/60))
}

// firstSeen records when each key (a ServiceImport's name, an address in
// a slice) was first seen in one cluster.
type firstSeen struct {
	mu sync.Mutex
	at map[string]time.Time
}

func (w *firstSeen) record(key string) {
	w.mu.Lock()
	if _, dup := w.at[key]; !dup {
		w.at[key] = time.Now()
	}
	w.mu.Unlock()
}

// watchImports records the ServiceImports of a namespace.
func watchImports(ctx context.Context, cfg *rest.Config, ns string) (*firstSeen, error) {
	mc, err := mcsclient.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	w := &firstSeen{at: map[string]time.Time{}}
	f := mcsinformers.NewSharedInformerFactoryWithOptions(mc, 0, mcsinformers.WithNamespace(ns))
	seen := func(o any) {
		if si, ok := o.(*mcsv1beta1.ServiceImport); ok {
			w.record(si.Name)
		}
	}
	if _, err := f.Multicluster().V1beta1().ServiceImports().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: seen, UpdateFunc: func(_, o any) { seen(o) }}); err != nil {
		return nil, err
	}
	f.Start(ctx.Done())
	f.WaitForCacheSync(ctx.Done())
	return w, nil
}

func (w *firstSeen) wait(ctx context.Context, key string) (time.Time, error) {
	for {
		w.mu.Lock()
		t, ok := w.at[key]
		w.mu.Unlock()
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

// seenByAll waits until every watcher has seen key and returns when the
// last of them did.
func seenByAll(ctx context.Context, watchers []*firstSeen, key string) (time.Time, error) {
	var last time.Time
	for _, w := range watchers {
		t, err := w.wait(ctx, key)
		if err != nil {
			return time.Time{}, err
		}
		if t.After(last) {
			last = t
		}
	}
	return last, nil
}
