package main

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/isthmus-dev/isthmus/bench/internal/fleet"
	"github.com/isthmus-dev/isthmus/bench/internal/procstat"
	"github.com/isthmus-dev/isthmus/test/cluster"
)

// What each sample cost the clusterset besides its latency, read between
// samples once the sample's follow-up work has settled: the writes each
// apiserver served (server.go), the agents' reconciles, and the CPU time
// of every process on the machine that takes part: the harness's children
// (apiservers, etcd, controller managers, KWOK) by program, and this
// process (the agents and the bench's own clients and watches). The
// CPU shows how much work one change sets off across the clusterset, all
// of it on the same CPUs as the change's own path.

// usage is what one interval between readings cost.
type usage struct {
	servers servers
	rec     reconciles
	cpu     map[string]time.Duration // by program
}

func (u usage) add(o usage) usage {
	out := usage{servers: u.servers.add(o.servers), rec: u.rec.add(o.rec), cpu: map[string]time.Duration{}}
	for k, v := range u.cpu {
		out.cpu[k] += v
	}
	for k, v := range o.cpu {
		out.cpu[k] += v
	}
	return out
}

// reading is the counters at one point between samples. The CPU is read
// on both sides of the apiservers' metrics, so that reading them (a few
// megabytes of text each) and collecting the garbage it leaves are charged
// to no sample.
type reading struct {
	servers             servers
	rec                 reconciles
	cpuBefore, cpuAfter map[string]time.Duration
}

type accountant struct {
	cs   *cluster.Clusterset
	full []*fleet.Member
	last reading
}

func newAccountant(ctx context.Context, cs *cluster.Clusterset, full []*fleet.Member) (*accountant, error) {
	ac := &accountant{cs: cs, full: full}
	r, err := ac.read(ctx)
	ac.last = r
	return ac, err
}

func (ac *accountant) read(ctx context.Context) (reading, error) {
	var r reading
	var err error
	r.cpuBefore = ac.cpu()
	r.servers, err = readServers(ctx, ac.cs)
	r.rec = readReconciles(ac.full[0], ac.full[1])
	// The reading's garbage is collected now, not in the next sample,
	// where the agents (in this process) would wait on it.
	runtime.GC()
	r.cpuAfter = ac.cpu()
	return r, err
}

// next reads the counters and returns what the interval since the last
// reading cost.
func (ac *accountant) next(ctx context.Context) (usage, error) {
	r, err := ac.read(ctx)
	if err != nil {
		return usage{}, err
	}
	u := usage{servers: r.servers.sub(ac.last.servers), rec: r.rec.sub(ac.last.rec), cpu: map[string]time.Duration{}}
	for k, v := range r.cpuBefore {
		u.cpu[k] = v - ac.last.cpuAfter[k]
	}
	ac.last = r
	return u, nil
}

// thisProcess names the bench's own process in the CPU table.
const thisProcess = "this process"

// cpu is the CPU time used so far by each program of the harness and by
// this process. A child that ended meanwhile would make its program's
// figure fall; none ends during a run.
func (ac *accountant) cpu() map[string]time.Duration {
	out := map[string]time.Duration{thisProcess: procstat.Self()}
	for _, pid := range ac.cs.PIDs() {
		if name, t, err := procstat.Process(pid); err == nil {
			out[name] += t
		}
	}
	return out
}

// printCPU prints each path's CPU per sample, by program.
func printCPU(paths []*path) {
	programs := map[string]bool{}
	for _, p := range paths {
		for k := range p.use.cpu {
			programs[k] = true
		}
	}
	var cols []string
	for k := range programs {
		if k != thisProcess {
			cols = append(cols, k)
		}
	}
	slices.Sort(cols)
	cols = append(cols, thisProcess)
	fmt.Printf("\n| CPU per sample, ms (the sample and its follow-up work, every cluster) |")
	for _, c := range cols {
		name := c
		if c == thisProcess {
			name += " (the agents, the bench)"
		}
		fmt.Printf(" %s |", name)
	}
	fmt.Printf(" total |\n|---|%s---|\n", strings.Repeat("---|", len(cols)))
	for _, p := range paths {
		n := float64(len(p.h.total))
		var total time.Duration
		fmt.Printf("| %s |", p.name)
		for _, c := range cols {
			total += p.use.cpu[c]
			fmt.Printf(" %.1f |", ms(p.use.cpu[c])/n)
		}
		fmt.Printf(" %.1f |\n", ms(total)/n)
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
