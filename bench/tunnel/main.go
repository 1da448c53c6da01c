// Command tunnel benchmarks the isthmus tunnel against its anchors in the
// same run: plain veth and the standalone wireguard-go program. It
// measures TCP throughput with iperf3 (1 and 4 streams), TCP
// request/response latency with a small Go probe (64 B, p50/p99/p99.9),
// and the reconcile cost of one peer change at 10, 100 and 1,000 peers.
// It needs root, iperf3, wg and the test/tools binaries; it creates only
// network namespaces named tnlb*.
//
//	go run ./bench/tunnel -reps 3 -duration 10s -rounds 4 -peers 10,100,1000
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/isthmus-dev/isthmus/test/cluster"
	"github.com/isthmus-dev/isthmus/test/netnstest"
)

const (
	nsA, nsB = "tnlbA", "tnlbB"
	underA   = "192.0.2.1"
	underB   = "192.0.2.2"
	podA     = "10.201.0.10"
	podB     = "10.202.0.10"
	tunA     = "10.201.255.254"
	tunB     = "10.202.255.254"
	rrPort   = 7100
)

type result struct {
	mode       string
	gbps       map[int][]float64 // streams -> per run
	p50, p99   time.Duration
	p999       time.Duration
	roundTrips int
}

func main() {
	reps := flag.Int("reps", 3, "iperf3 runs per stream count")
	dur := flag.Duration("duration", 10*time.Second, "length of each iperf3 run and of the latency probe")
	peerCounts := flag.String("peers", "10,100,1000", "peer counts for the reconcile cost (empty: skip it)")
	rounds := flag.Int("rounds", 1, "throughput rounds, alternating which tunnel goes first (0: skip throughput)")
	resync := flag.Duration("resync", 30*time.Second, "the daemons' --resync: how often they run a full pass")
	flag.Parse()
	if err := run(*reps, *dur, *peerCounts, *rounds, *resync); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		removeNamespaces()
		os.Exit(1)
	}
}

func run(reps int, dur time.Duration, peerCounts string, rounds int, resync time.Duration) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root")
	}
	for _, tool := range []string{"ip", "wg", "iperf3"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("needs %s: %w", tool, err)
		}
	}
	dir, err := os.MkdirTemp("", "tnlb-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	for pkg, out := range map[string]string{"github.com/isthmus-dev/isthmus/cmd/isthmus": "isthmus", "golang.zx2c4.com/wireguard": "wireguard-go"} {
		b := exec.Command("go", "build", "-o", filepath.Join(dir, out), pkg)
		b.Stderr = os.Stderr
		if err := b.Run(); err != nil {
			return fmt.Errorf("building %s: %w", pkg, err)
		}
	}
	removeNamespaces()
	defer removeNamespaces()
	must("ip", "netns", "add", nsA)
	must("ip", "netns", "add", nsB)
	must("ip", "link", "add", "tnlbA0", "netns", nsA, "type", "veth", "peer", "name", "tnlbB0", "netns", nsB)
	for _, s := range []struct{ ns, dev, under, pod string }{{nsA, "tnlbA0", underA, podA}, {nsB, "tnlbB0", underB, podB}} {
		must("ip", "-n", s.ns, "addr", "add", s.under+"/24", "dev", s.dev)
		must("ip", "-n", s.ns, "link", "set", s.dev, "up")
		must("ip", "-n", s.ns, "link", "set", "lo", "up")
		must("ip", "-n", s.ns, "addr", "add", s.pod+"/32", "dev", "lo")
	}
	cpu, _ := os.ReadFile("/proc/cpuinfo")
	fmt.Printf("conditions: %s, %d CPUs (%s), kernel %s, veth MTU 1500, tunnel MTU 1420, iperf3 %d x %s per cell, no CPU pinning; other sessions share the machine; load average %s\n",
		time.Now().UTC().Format(time.RFC3339), strings.Count(string(cpu), "processor\t:"), modelName(string(cpu)), kernel(), reps, dur, loadavg())

	// The broker runs through every measurement, so its apiserver and
	// etcd load the machine equally for each path.
	cs, err := cluster.New(context.Background(), cluster.Options{Broker: true, Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		return err
	}
	defer cs.Stop()

	if rounds > 0 {
		if err := throughput(cs, dir, reps, dur, rounds, resync); err != nil {
			return err
		}
	}
	if peerCounts == "" {
		return nil
	}
	d, err := startDaemons(context.Background(), cs, filepath.Join(dir, "isthmus"), resync)
	if err != nil {
		return err
	}
	defer d.stop()
	fmt.Printf("load average before the reconcile runs: %s\n", loadavg())
	fmt.Println("\nreconcile cost of one peer change (isthmus tunnel in tnlbA; mean change pass from isthmus_tunnel_reconcile_duration_seconds{kind=\"change\"} over the passes the change caused, the device operations it made, record write to device change, and the mean full pass (start, resync) at that peer count):")
	fmt.Println("| peers | change pass | its device operations | write → device | full pass | daemon CPU per second, idle |")
	fmt.Println("|---|---|---|---|---|---|")
	for _, s := range strings.Split(peerCounts, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("peer count %q: %w", s, err)
		}
		c, err := d.reconcileCost(context.Background(), n)
		if err != nil {
			return fmt.Errorf("reconcile cost at %d peers: %w", n, err)
		}
		full := "—"
		if c.full > 0 {
			full = c.full.Round(10 * time.Microsecond).String()
		}
		fmt.Printf("| %d | %s | %v | %s | %s | %s |\n", n, c.pass.Round(time.Microsecond), c.ops, c.e2e.Round(100*time.Microsecond), full, c.idle.Round(100*time.Microsecond))
	}
	fmt.Printf("load average after: %s\n", loadavg())
	return nil
}

// throughput measures veth, the wireguard-go program and our daemon in
// each round; odd rounds measure ours before the program, so a trend in
// the machine's load does not favour either.
func throughput(cs *cluster.Clusterset, dir string, reps int, dur time.Duration, rounds int, resync time.Duration) error {
	type ratio struct{ one, four float64 }
	var ratios []ratio
	for round := range rounds {
		fmt.Printf("\nround %d, load average %s\n", round+1, loadavg())
		results := []result{}
		r, err := measure("plain veth", underB, underA, reps, dur)
		if err != nil {
			return err
		}
		results = append(results, r)
		order := []string{"program", "ours"}
		if round%2 == 1 {
			order = []string{"ours", "program"}
		}
		for _, which := range order {
			var stop func()
			mode := "wireguard-go program"
			if which == "program" {
				if stop, err = standalone(dir); err != nil {
					return err
				}
			} else {
				mode = "isthmus tunnel (embedded)"
				d, err := startDaemons(context.Background(), cs, filepath.Join(dir, "isthmus"), resync)
				if err != nil {
					return err
				}
				stop = d.stop
			}
			r, err := measure(mode, podB, podA, reps, dur)
			stop()
			if err != nil {
				return err
			}
			results = append(results, r)
		}
		printResults(results)
		var ours, prog result
		for _, r := range results {
			switch r.mode {
			case "wireguard-go program":
				prog = r
			case "isthmus tunnel (embedded)":
				ours = r
			}
		}
		ratios = append(ratios, ratio{mean(ours.gbps[1]) / mean(prog.gbps[1]), mean(ours.gbps[4]) / mean(prog.gbps[4])})
	}
	fmt.Println("\nours / wireguard-go program by round (1 stream, 4 streams):")
	var ones, fours []float64
	for i, r := range ratios {
		fmt.Printf("  round %d: %.3f, %.3f\n", i+1, r.one, r.four)
		ones, fours = append(ones, r.one), append(fours, r.four)
	}
	slices.Sort(ones)
	slices.Sort(fours)
	fmt.Printf("  1 stream: median %.3f, range %.3f–%.3f; 4 streams: median %.3f, range %.3f–%.3f\n",
		ones[len(ones)/2], ones[0], ones[len(ones)-1], fours[len(fours)/2], fours[0], fours[len(fours)-1])
	return nil
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func mean(v []float64) float64 {
	s := 0.0
	for _, x := range v {
		s += x
	}
	return s / float64(len(v))
}

func modelName(cpuinfo string) string {
	for _, l := range strings.Split(cpuinfo, "\n") {
		if strings.HasPrefix(l, "model name") {
			_, v, _ := strings.Cut(l, ":")
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

func kernel() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(b))
}

// standalone runs the wireguard-go program in both namespaces, configured
// with wg(8) like the embedded device: same MTU, keepalive and routes.
func standalone(dir string) (func(), error) {
	type side struct{ ns, dev, under, tun, remoteCIDR, remoteUnder string }
	sides := []side{{nsA, "tnlbsA", underA, tunA, "10.202.0.0/16", underB}, {nsB, "tnlbsB", underB, tunB, "10.201.0.0/16", underA}}
	var cmds []*exec.Cmd
	stop := func() {
		for _, c := range cmds {
			_ = c.Process.Signal(syscall.SIGTERM)
			_ = c.Wait()
		}
	}
	keys := map[string][2]string{}
	for _, s := range sides {
		c := exec.Command("ip", "netns", "exec", s.ns, filepath.Join(dir, "wireguard-go"), "-f", s.dev)
		c.Env = append(os.Environ(), "LOG_LEVEL=error")
		if err := c.Start(); err != nil {
			stop()
			return nil, err
		}
		cmds = append(cmds, c)
		priv, err := netnstest.Sh("wg", "genkey")
		if err != nil {
			stop()
			return nil, err
		}
		pubCmd := exec.Command("wg", "pubkey")
		pubCmd.Stdin = strings.NewReader(priv)
		pub, err := pubCmd.Output()
		if err != nil {
			stop()
			return nil, err
		}
		keys[s.ns] = [2]string{strings.TrimSpace(priv), strings.TrimSpace(string(pub))}
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, s := range sides {
		for {
			if _, err := os.Stat("/var/run/wireguard/" + s.dev + ".sock"); err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for i, s := range sides {
		other := sides[1-i]
		keyFile := filepath.Join(dir, s.dev+".key")
		if err := os.WriteFile(keyFile, []byte(keys[s.ns][0]), 0o600); err != nil {
			stop()
			return nil, err
		}
		for _, c := range [][]string{
			{"wg", "set", s.dev, "private-key", keyFile, "listen-port", "51830", "peer", keys[other.ns][1],
				"endpoint", s.remoteUnder + ":51830", "allowed-ips", s.remoteCIDR, "persistent-keepalive", "10"},
			{"ip", "-n", s.ns, "addr", "add", s.tun + "/32", "dev", s.dev},
			{"ip", "-n", s.ns, "link", "set", s.dev, "mtu", "1420", "up"},
			{"ip", "-n", s.ns, "route", "add", s.remoteCIDR, "dev", s.dev, "src", s.tun},
		} {
			if _, err := netnstest.Sh(c...); err != nil {
				stop()
				return nil, err
			}
		}
	}
	return stop, waitReach(podA, podB, 10*time.Second)
}

// waitReach waits until a TCP connection from pod A's address to pod B's
// iperf-free latency port can be made, i.e. the path carries traffic.
func waitReach(from, to string, timeout time.Duration) error {
	stop, err := rrServer(to)
	if err != nil {
		return err
	}
	defer stop()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		var c net.Conn
		err := netnstest.Run(nsA, func() (err error) {
			d := net.Dialer{Timeout: 300 * time.Millisecond, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
			c, err = d.Dial("tcp", net.JoinHostPort(to, strconv.Itoa(rrPort)))
			return err
		})
		if err == nil {
			c.Close()
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s cannot reach %s within %s", from, to, timeout)
}

// measure runs iperf3 (1 and 4 streams, reps times each) and the latency
// probe from pod address client in A to server in B.
func measure(mode, server, client string, reps int, dur time.Duration) (result, error) {
	r := result{mode: mode, gbps: map[int][]float64{}}
	srv := exec.Command("ip", "netns", "exec", nsB, "iperf3", "-s", "-B", server)
	if err := srv.Start(); err != nil {
		return r, err
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	time.Sleep(300 * time.Millisecond)
	for _, streams := range []int{1, 4} {
		for range reps {
			out, err := exec.Command("ip", "netns", "exec", nsA, "iperf3", "-c", server, "-B", client, "-t", strconv.Itoa(int(dur.Seconds())),
				"-P", strconv.Itoa(streams), "-l", "128K", "-J").Output()
			if err != nil {
				return r, fmt.Errorf("%s: iperf3 -P %d: %w: %s", mode, streams, err, out)
			}
			var j struct {
				End struct {
					SumReceived struct {
						BitsPerSecond float64 `json:"bits_per_second"`
					} `json:"sum_received"`
				} `json:"end"`
			}
			if err := json.Unmarshal(out, &j); err != nil {
				return r, fmt.Errorf("%s: reading iperf3 output: %w", mode, err)
			}
			r.gbps[streams] = append(r.gbps[streams], j.End.SumReceived.BitsPerSecond/1e9)
		}
	}
	lat, err := requestResponse(client, server, dur)
	if err != nil {
		return r, fmt.Errorf("%s: latency: %w", mode, err)
	}
	slices.Sort(lat)
	r.roundTrips = len(lat)
	r.p50, r.p99, r.p999 = lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)*999/1000]
	fmt.Fprintf(os.Stderr, "%s: %v, p50 %s p99 %s\n", mode, r.gbps, r.p50, r.p99)
	return r, nil
}

// rrServer echoes 64-byte requests on addr:rrPort inside B.
func rrServer(addr string) (func(), error) {
	var l net.Listener
	if err := netnstest.Run(nsB, func() (err error) {
		l, err = net.Listen("tcp", net.JoinHostPort(addr, strconv.Itoa(rrPort)))
		return err
	}); err != nil {
		return nil, err
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 64)
				for {
					if _, err := readFull(c, buf); err != nil {
						return
					}
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	return func() { l.Close() }, nil
}

func readFull(c net.Conn, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := c.Read(buf[n:])
		if err != nil {
			return n, err
		}
		n += m
	}
	return n, nil
}

// requestResponse sends 64-byte requests one at a time for dur over one
// TCP connection (TCP_NODELAY) and returns each round trip's time.
func requestResponse(client, server string, dur time.Duration) ([]time.Duration, error) {
	stop, err := rrServer(server)
	if err != nil {
		return nil, err
	}
	defer stop()
	var c net.Conn
	if err := netnstest.Run(nsA, func() (err error) {
		d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(client)}}
		c, err = d.Dial("tcp", net.JoinHostPort(server, strconv.Itoa(rrPort)))
		return err
	}); err != nil {
		return nil, err
	}
	defer c.Close()
	buf := make([]byte, 64)
	var out []time.Duration
	end := time.Now().Add(dur)
	for time.Now().Before(end) {
		start := time.Now()
		if _, err := c.Write(buf); err != nil {
			return nil, err
		}
		if _, err := readFull(c, buf); err != nil {
			return nil, err
		}
		out = append(out, time.Since(start))
	}
	return out, nil
}

func printResults(rs []result) {
	span := func(v []float64) string {
		return fmt.Sprintf("[%.2f–%.2f]", slices.Min(v), slices.Max(v))
	}
	base := rs[0]
	var wgGo result
	for _, r := range rs {
		if r.mode == "wireguard-go program" {
			wgGo = r
		}
	}
	fmt.Println("\n| path | 1 stream Gbit/s | 4 streams Gbit/s | vs veth (1 / 4) | vs wireguard-go (1 / 4) | TCP RR p50 / p99 / p99.9 (round trips) |")
	fmt.Println("|---|---|---|---|---|---|")
	for _, r := range rs {
		m1, m4 := mean(r.gbps[1]), mean(r.gbps[4])
		vsWG := "—"
		if wgGo.gbps != nil && r.mode != base.mode {
			vsWG = fmt.Sprintf("%.2f / %.2f", m1/mean(wgGo.gbps[1]), m4/mean(wgGo.gbps[4]))
		}
		fmt.Printf("| %s | %.2f %s | %.2f %s | %.3f / %.3f | %s | %s / %s / %s (%d) |\n", r.mode, m1, span(r.gbps[1]), m4, span(r.gbps[4]),
			m1/mean(base.gbps[1]), m4/mean(base.gbps[4]), vsWG,
			r.p50.Round(time.Microsecond), r.p99.Round(time.Microsecond), r.p999.Round(time.Microsecond), r.roundTrips)
	}
}
