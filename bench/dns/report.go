package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"time"
)

type results struct {
	conf    config
	data    dataset
	queries int
	servers []*server
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func (r results) print(w io.Writer) {
	host, _ := os.Hostname()
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Fprintf(w, "### %d ClusterSetIP + %d headless services (%s, %s, %d CPUs, load %s)\n\n", r.data.clusterSetIP, r.data.headless, time.Now().UTC().Format("2006-01-02 15:04 MST"), host, runtime.NumCPU(), string(load[:14]))
	fmt.Fprintf(w, "%d queries, shuffled, 20%% NXDOMAIN. Servers pinned to CPU 1 with GOMAXPROCS=1, dnsperf to CPU 0; %d rounds, the first discarded; medians of the rest.\n\n", r.queries, r.conf.rounds)
	fmt.Fprintf(w, "| server | saturation QPS | queries per server CPU-s | p50 / p90 / p99 / p99.9 at %d QPS (µs) | lost | CPU-s per %v at that rate | update to answer p50 / max (ms, from the write's response) | RSS MB (peak) | ready after |\n|---|---|---|---|---|---|---|---|---|\n", r.conf.rate, r.conf.rateDur)
	for _, s := range r.servers {
		var qps, per, p50, p90, p99, p999, cpu []float64
		lost := 0
		for _, x := range s.sat {
			qps, per = append(qps, x.qps), append(per, x.perCPU)
			lost += x.lost
		}
		for _, x := range s.lat {
			p50, p90, p99, p999 = append(p50, us(x.p50)), append(p90, us(x.p90)), append(p99, us(x.p99)), append(p999, us(x.p999))
			cpu = append(cpu, x.cpu)
			lost += x.lost
		}
		fmt.Fprintf(w, "| %s | %.0f | %.0f | %.0f / %.0f / %.0f / %.0f | %d | %.2f | %.1f / %.1f (n=%d) | %d (%d) | %v |\n",
			s.name, median(qps), median(per), median(p50), median(p90), median(p99), median(p999), lost, median(cpu),
			ms(pct(s.upd, 50)), ms(pct(s.upd, 100)), len(s.upd), s.rss, s.peak, s.startup.Round(time.Millisecond))
	}
	fmt.Fprintln(w)
	if len(r.servers) > 1 && r.servers[0].name == "isthmus" {
		base := r.servers[0]
		for _, s := range r.servers[1:] {
			fmt.Fprintf(w, "- isthmus / %s: saturation QPS ×%.2f, queries per CPU-s ×%.2f, p99 ×%.2f, RSS ×%.2f\n", s.name,
				ratio(base.sat, s.sat, func(x satResult) float64 { return x.qps }),
				ratio(base.sat, s.sat, func(x satResult) float64 { return x.perCPU }),
				ratioL(base.lat, s.lat), float64(base.rss)/float64(max(s.rss, 1)))
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w, "Per round:")
	fmt.Fprintln(w)
	for _, s := range r.servers {
		fmt.Fprintf(w, "- %s: saturation QPS", s.name)
		for _, x := range s.sat {
			fmt.Fprintf(w, " %.0f", x.qps)
		}
		fmt.Fprintf(w, "; p99 µs")
		for _, x := range s.lat {
			fmt.Fprintf(w, " %.0f", us(x.p99))
		}
		fmt.Fprintln(w)
	}
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }

func ratio(a, b []satResult, f func(satResult) float64) float64 {
	var x, y []float64
	for _, v := range a {
		x = append(x, f(v))
	}
	for _, v := range b {
		y = append(y, f(v))
	}
	if median(y) == 0 {
		return 0
	}
	return median(x) / median(y)
}

// ratioL is how many times lower our p99 is.
func ratioL(a, b []latResult) float64 {
	var x, y []float64
	for _, v := range a {
		x = append(x, us(v.p99))
	}
	for _, v := range b {
		y = append(y, us(v.p99))
	}
	if median(x) == 0 {
		return 0
	}
	return median(y) / median(x)
}
