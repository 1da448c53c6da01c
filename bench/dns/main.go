// Command dns benchmarks `isthmus dns` against its anchor, CoreDNS v1.15.0's
// `kubernetes … { multicluster clusterset.local }`, plain and with `cache 30`
// in front, all three reading the same ServiceImports and EndpointSlices
// from one real kube-apiserver of the test harness, in the same run.
//
// Each server is pinned to CPU 1 with GOMAXPROCS=1, dnsperf to CPU 0. Per
// round and server: saturation (dnsperf, 100 outstanding) with the server's
// CPU-seconds from /proc, then a fixed offered rate with per-query latencies
// (dnsperf -v) for p50/p99. Round 1 is a discarded warm-up. Then the
// update-to-answer latency: an EndpointSlice address changed through the
// apiserver until the server answers the new address. Results go to stdout
// as markdown (bench/README.md keeps the latest).
//
//	go run ./bench/dns -names 1000
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/isthmus-dev/isthmus/test/cluster"
)

func main() {
	names := flag.Int("names", 1000, "ClusterSetIP services (plus a tenth as many headless ones with 3 endpoints)")
	rounds := flag.Int("rounds", 3, "rounds per measurement, the first discarded")
	sat := flag.Duration("sat", 15*time.Second, "length of a saturation run")
	rate := flag.Int("rate", 10000, "offered queries/s of the latency run")
	rateDur := flag.Duration("rate-duration", 10*time.Second, "length of a latency run")
	updates := flag.Int("updates", 20, "update-to-answer samples per server (a sixth of that with cache)")
	only := flag.String("only", "", "comma-separated servers to run (isthmus, coredns, coredns-cache); all when empty")
	baseline := flag.String("baseline", "", "an isthmus binary built elsewhere (an older commit) to run beside as isthmus-base, in the same run")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	// An interrupt cancels the run, so the deferred stops take the harness
	// and the servers down instead of orphaning them.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, log, config{*names, *rounds, *sat, *rate, *rateDur, *updates, *only, *baseline}); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		stop()
		os.Exit(1)
	}
}

type config struct {
	names, rounds int
	sat           time.Duration
	rate          int
	rateDur       time.Duration
	updates       int
	only          string
	baseline      string
}

func run(ctx context.Context, log *slog.Logger, c config) error {
	for _, tool := range []string{"dnsperf", "taskset"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not installed (Debian dnsperf, util-linux)", tool)
		}
	}
	corednsDir, err := exec.Command("bash", "bench/dns/build-coredns.sh", "--print").Output()
	if err != nil && c.only != "isthmus" {
		return fmt.Errorf("CoreDNS anchor not built: run bench/dns/build-coredns.sh (from the repository root)")
	}
	work, err := os.MkdirTemp("", "isthmus-dnsbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	isthmus := filepath.Join(work, "isthmus")
	if out, err := exec.Command("go", "build", "-o", isthmus, "./cmd/isthmus").CombinedOutput(); err != nil {
		return fmt.Errorf("building isthmus: %v\n%s", err, out)
	}

	cs, err := cluster.New(ctx, cluster.Options{Members: 1, Log: log})
	if err != nil {
		return fmt.Errorf("starting the harness: %w", err)
	}
	defer cs.Stop()
	m := cs.Members[0]
	kc, err := kubernetes.NewForConfig(m.Config)
	if err != nil {
		return err
	}
	mc, err := mcsclient.NewForConfig(m.Config)
	if err != nil {
		return err
	}
	if err := installCRDs(ctx, m); err != nil {
		return err
	}
	d := dataset{clusterSetIP: c.names, headless: c.names / 10}
	began := time.Now()
	if err := d.write(ctx, kc, mc); err != nil {
		return fmt.Errorf("writing objects: %w", err)
	}
	log.Info("objects written", "imports", d.clusterSetIP+d.headless, "slices", d.headless, "took", time.Since(began).Round(time.Millisecond))
	queries := filepath.Join(work, "queries.txt")
	qs := d.queries("clusterset.local", 1)
	if err := os.WriteFile(queries, []byte(strings.Join(qs, "\n")+"\n"), 0o644); err != nil {
		return err
	}

	all := []*server{
		{name: "isthmus", cmd: []string{isthmus, "dns", "--kubeconfig", m.Kubeconfig, "--listen", "127.0.0.1:15353", "--metrics-addr", "", "--udp-sockets", "1"}, port: 15353},
		corefileServer(work, strings.TrimSpace(string(corednsDir)), "coredns", 15354, m.Kubeconfig, m.Name, false),
		corefileServer(work, strings.TrimSpace(string(corednsDir)), "coredns-cache", 15355, m.Kubeconfig, m.Name, true),
	}
	if c.baseline != "" {
		all = append(all, &server{name: "isthmus-base", cmd: []string{c.baseline, "dns", "--kubeconfig", m.Kubeconfig, "--listen", "127.0.0.1:15356", "--metrics-addr", "", "--udp-sockets", "1"}, port: 15356})
	}
	var servers []*server
	for _, s := range all {
		if c.only == "" || strings.Contains(","+c.only+",", ","+s.name+",") {
			servers = append(servers, s)
		}
	}
	probe := "svc0.ns0.svc.clusterset.local."
	for _, s := range servers {
		if err := s.start(ctx, work, probe); err != nil {
			return err
		}
		defer s.stop()
		log.Info("server answering", "server", s.name, "after", s.startup.Round(time.Millisecond), "rss_mb", s.rssMB())
	}

	res := results{conf: c, data: d, queries: len(qs)}
	for r := range c.rounds {
		for _, s := range servers {
			sr, err := saturate(ctx, s, queries, c.sat)
			if err != nil {
				return err
			}
			log.Info("saturation", "round", r+1, "server", s.name, "qps", int(sr.qps), "q_per_cpu_s", int(sr.perCPU), "lost", sr.lost)
			if r > 0 {
				s.sat = append(s.sat, sr)
			}
		}
	}
	for r := range c.rounds {
		for _, s := range servers {
			lr, err := fixedRate(ctx, s, queries, c.rate, c.rateDur)
			if err != nil {
				return err
			}
			log.Info("fixed rate", "round", r+1, "server", s.name, "p50_us", lr.p50.Microseconds(), "p99_us", lr.p99.Microseconds(), "lost", lr.lost, "cpu_s", lr.cpu)
			if r > 0 {
				s.lat = append(s.lat, lr)
			}
		}
	}
	for _, s := range servers {
		n := c.updates
		if s.cached {
			n = max(c.updates/6, 3)
		}
		if err := updateLatency(ctx, kc, d, s, n); err != nil {
			return err
		}
		log.Info("update to answer", "server", s.name, "p50_ms", ms(pct(s.upd, 50)), "max_ms", ms(pct(s.upd, 100)))
	}
	for _, s := range servers {
		s.rss, s.peak = s.rssMB(), s.statusMB("VmHWM:")
	}
	res.servers = servers
	res.print(os.Stdout)
	return nil
}
