package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/miekg/dns"

	"github.com/isthmus-dev/isthmus/bench/internal/promtext"
)

// measureResolver runs `isthmus dns`, built from this tree, on member a's
// imports (K services with N clusters behind each, and their slices) as
// the chart runs it, in a process of its own so its memory is its alone.
// It prints the time from start to ready, the resolver's Go heap and
// resident memory, and checks that it answers one of the names.
func measureResolver(ctx context.Context, kubeconfig string, k, n int) error {
	work, err := os.MkdirTemp("", "isthmus-scale-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	bin := filepath.Join(work, "isthmus")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/isthmus").CombinedOutput(); err != nil {
		return fmt.Errorf("building isthmus (run from the repository root): %v\n%s", err, out)
	}
	dnsAddr, metricsAddr := freeAddr(), freeAddr()
	cmd := exec.CommandContext(ctx, bin, "dns", "--kubeconfig", kubeconfig, "--listen", dnsAddr,
		"--metrics-addr", metricsAddr, "--udp-sockets", "1", "--log-level", "warn")
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	for {
		if r, err := http.Get("http://" + metricsAddr + "/readyz"); err == nil {
			r.Body.Close()
			if r.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	ready := time.Since(start)
	name := fmt.Sprintf("s0.%s.svc.clusterset.local.", simNamespace)
	r, _, err := new(dns.Client).ExchangeContext(ctx, new(dns.Msg).SetQuestion(name, dns.TypeA), dnsAddr)
	if err != nil {
		return fmt.Errorf("asking the resolver for %s: %w", name, err)
	}
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 {
		return fmt.Errorf("the resolver answered %s with %s and %d records", name, dns.RcodeToString[r.Rcode], len(r.Answer))
	}
	time.Sleep(5 * time.Second) // a GC cycle or two after the first build
	heap, err := scrape(metricsAddr, "go_memstats_heap_inuse_bytes")
	if err != nil {
		return err
	}
	_, res := procStat(cmd.Process.Pid)
	fmt.Printf("| a's resolver (`isthmus dns`, its own process) | measured |\n|---|---|\n| start → ready (%d imports, %d clusters behind each, and their slices) | %v |\n| Go heap in use; resident memory | %.1f MiB; %.1f MiB |\n| %s A | %s, %d record(s) |\n\n",
		k, n, ready.Round(time.Millisecond), heap/(1<<20), float64(res)/(1<<20),
		strings.TrimSuffix(name, "."), dns.RcodeToString[r.Rcode], len(r.Answer))
	return nil
}

// freeAddr is a loopback address whose port was free a moment ago.
func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "127.0.0.1:0"
	}
	defer l.Close()
	return l.Addr().String()
}

// scrape reads one unlabelled sample from a /metrics page.
func scrape(addr, metric string) (float64, error) {
	r, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer r.Body.Close()
	fams, err := promtext.Parse(r.Body)
	if err != nil {
		return 0, err
	}
	f := fams[metric]
	if f == nil || len(f.GetMetric()) != 1 {
		return 0, fmt.Errorf("%s: no single %s", addr, metric)
	}
	m := f.GetMetric()[0]
	return m.GetGauge().GetValue() + m.GetCounter().GetValue() + m.GetUntyped().GetValue(), nil
}
