package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

type satResult struct {
	qps, perCPU float64
	lost        int
	cpu         float64
}

type latResult struct {
	p50, p90, p99, p999 time.Duration
	lost                int
	cpu                 float64
}

func dnsperf(ctx context.Context, s *server, queries string, args ...string) (string, float64, error) {
	base := []string{"-c", "0", "dnsperf", "-s", "127.0.0.1", "-p", strconv.Itoa(s.port), "-d", queries, "-c", "1", "-T", "1"}
	cmd := exec.CommandContext(ctx, "taskset", append(base, args...)...)
	before := s.cpu()
	out, err := cmd.Output()
	cpu := (s.cpu() - before).Seconds()
	if err != nil {
		return "", 0, fmt.Errorf("dnsperf against %s: %v\n%s", s.name, err, out)
	}
	return string(out), cpu, nil
}

func field(out, prefix string) string {
	for _, l := range strings.Split(out, "\n") {
		if l = strings.TrimSpace(l); strings.HasPrefix(l, prefix) {
			return strings.Fields(strings.TrimPrefix(l, prefix))[0]
		}
	}
	return ""
}

func saturate(ctx context.Context, s *server, queries string, d time.Duration) (satResult, error) {
	out, cpu, err := dnsperf(ctx, s, queries, "-l", strconv.Itoa(int(d.Seconds())), "-q", "100")
	if err != nil {
		return satResult{}, err
	}
	qps, _ := strconv.ParseFloat(field(out, "Queries per second:"), 64)
	lost, _ := strconv.Atoi(field(out, "Queries lost:"))
	completed, _ := strconv.ParseFloat(field(out, "Queries completed:"), 64)
	r := satResult{qps: qps, lost: lost, cpu: cpu}
	if cpu > 0 {
		r.perCPU = completed / cpu
	}
	return r, nil
}

func fixedRate(ctx context.Context, s *server, queries string, rate int, d time.Duration) (latResult, error) {
	out, cpu, err := dnsperf(ctx, s, queries, "-l", strconv.Itoa(int(d.Seconds())), "-q", "500", "-Q", strconv.Itoa(rate), "-v")
	if err != nil {
		return latResult{}, err
	}
	var lat []time.Duration
	sc := bufio.NewScanner(bytes.NewReader([]byte(out)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 5 && f[0] == ">" {
			if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
				lat = append(lat, time.Duration(v*float64(time.Second)))
			}
		}
	}
	lost, _ := strconv.Atoi(field(out, "Queries lost:"))
	return latResult{p50: pct(lat, 50), p90: pct(lat, 90), p99: pct(lat, 99), p999: pct(lat, 99.9), lost: lost, cpu: cpu}, nil
}

func pct(v []time.Duration, p float64) time.Duration {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	i := int(float64(len(s)-1) * p / 100)
	return s[i]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// updateLatency changes pod-0's address of headless service 0 through the
// apiserver and polls the server every millisecond until it answers the
// new address.
func updateLatency(ctx context.Context, kc kubernetes.Interface, d dataset, s *server, samples int) error {
	ns, name := d.hl(0)
	host := fmt.Sprintf("pod-0.%s.%s.%s.svc.clusterset.local.", d.cluster(0), name, ns)
	c := &dns.Client{Timeout: 100 * time.Millisecond}
	for k := range samples {
		ip := fmt.Sprintf("10.250.%d.%d", k/250, k%250+1)
		es, err := kc.DiscoveryV1().EndpointSlices(ns).Get(ctx, name+"-"+d.cluster(0), metav1.GetOptions{})
		if err != nil {
			return err
		}
		es.Endpoints[0].Addresses = []string{ip}
		sent := time.Now()
		if _, err := kc.DiscoveryV1().EndpointSlices(ns).Update(ctx, es, metav1.UpdateOptions{}); err != nil {
			return err
		}
		acked := time.Now()
		for {
			q := new(dns.Msg)
			q.SetQuestion(host, dns.TypeA)
			if r, _, err := c.Exchange(q, s.addr()); err == nil && len(r.Answer) == 1 && r.Answer[0].(*dns.A).A.String() == ip {
				break
			}
			if time.Since(sent) > 30*time.Second {
				return fmt.Errorf("%s never answered the new address %s", s.name, ip)
			}
			time.Sleep(time.Millisecond)
		}
		seen := time.Now()
		s.upd = append(s.upd, seen.Sub(acked))
		s.updSent = append(s.updSent, seen.Sub(sent))
		time.Sleep(300 * time.Millisecond)
	}
	return nil
}
