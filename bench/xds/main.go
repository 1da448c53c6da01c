// Command xds measures what the xDS server's pushes cost at scale against
// the anchor, go-control-plane's plain SotW snapshot cache, in the same
// run: 10,000 services × 10 endpoints, 1 and 10 subscribed clients, the
// initial push, then one endpoint changing. Clients are separate
// processes (this binary with -client), so the server's CPU is its own.
//
//	go run ./bench/xds -services 10000 -clients 1,10 -updates 5
//	go run ./bench/xds -services 10 -endpoints 1000   # bench/scale's shape at N = 1,000, K = 10
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/isthmus-dev/isthmus/bench/internal/procstat"
	"github.com/isthmus-dev/isthmus/xds/server"
)

func main() {
	client := flag.Bool("client", false, "(internal) run as one subscribed client")
	addr := flag.String("addr", "", "(internal) the server a client dials")
	services := flag.Int("services", 10000, "services (one ClusterLoadAssignment each)")
	endpoints := flag.Int("endpoints", 10, "endpoints of each service, half in each of two localities (even, at least 2)")
	clients := flag.String("clients", "1,10", "comma-separated client counts")
	updates := flag.Int("updates", 5, "single-endpoint changes measured per configuration")
	impls := flag.String("impls", "snapshot-cache,isthmus", "servers to measure, in this order")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the single-endpoint changes here")
	flag.Parse()
	if *endpoints < 2 || *endpoints%2 != 0 || *endpoints > 50000 {
		fmt.Fprintf(os.Stderr, "bad -endpoints %d: an even number from 2 to 50000\n", *endpoints)
		os.Exit(2)
	}
	if *cpuProfile != "" {
		profile = *cpuProfile
	}
	if *client {
		if err := runClient(*addr, *services); err != nil {
			fmt.Fprintln(os.Stderr, "client:", err)
			os.Exit(1)
		}
		return
	}
	var rows []row
	for _, s := range strings.Split(*clients, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "bad -clients %q\n", s)
			os.Exit(2)
		}
		for _, impl := range strings.Split(*impls, ",") {
			r, err := measure(impl, *services, *endpoints, n, *updates)
			if err != nil {
				fmt.Fprintf(os.Stderr, "%s with %d clients: %v\n", impl, n, err)
				os.Exit(1)
			}
			rows = append(rows, r)
			fmt.Fprintf(os.Stderr, "done: %s, %d clients\n", impl, n)
		}
	}
	report(os.Stdout, rows, *services, *endpoints, *updates)
}

// profile, when set, receives a CPU profile of the changes.
var profile string

// names are the assignments' names.
func names(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("outbound|80||svc-%05d.bench.svc.clusterset.local", i)
	}
	return out
}

// assignment is a service's endpoints in two localities (priorities 0
// and 1), half in each; gen varies the first endpoint's port.
func assignment(name string, i, gen, endpoints int) *endpointv3.ClusterLoadAssignment {
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: name}
	for l := 0; l < 2; l++ {
		loc := &endpointv3.LocalityLbEndpoints{
			Locality:            &corev3.Locality{Region: "eu", SubZone: fmt.Sprintf("cluster-%d", l)},
			LoadBalancingWeight: wrapperspb.UInt32(5),
			Priority:            uint32(l),
		}
		for e := 0; e < endpoints/2; e++ {
			port := uint32(8080)
			if l == 0 && e == 0 {
				port += uint32(gen)
			}
			loc.LbEndpoints = append(loc.LbEndpoints, &endpointv3.LbEndpoint{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address: fmt.Sprintf("10.%d.%d.%d", 240+l, i/250, i%250), PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port + uint32(e)},
				}}}}},
				HealthStatus: corev3.HealthStatus_HEALTHY,
			})
		}
		cla.Endpoints = append(cla.Endpoints, loc)
	}
	return cla
}

// impl is the server under test.
type impl interface {
	register(*grpc.Server)
	load(all map[string]types.Resource) error
	change(name string, r types.Resource, all map[string]types.Resource, gen int) error
	expectNodes(n int)
}

// ours is the isthmus server: a linear cache for assignments.
type ours struct{ s *server.Server }

func (o *ours) register(g *grpc.Server)                  { o.s.Register(g) }
func (o *ours) load(all map[string]types.Resource) error { return o.s.UpdateEndpoints(all) }
func (o *ours) expectNodes(int)                          {}
func (o *ours) change(name string, r types.Resource, _ map[string]types.Resource, _ int) error {
	return o.s.UpdateEndpoints(map[string]types.Resource{name: r})
}

// anchor is go-control-plane's plain SotW snapshot cache, one snapshot
// per node as its users set them.
type anchor struct {
	c     cachev3.SnapshotCache
	srv   serverv3.Server
	nodes int
}

func (a *anchor) register(g *grpc.Server) {
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(g, a.srv)
}
func (a *anchor) expectNodes(n int) { a.nodes = n }
func (a *anchor) set(all map[string]types.Resource, gen int) error {
	rs := make([]types.Resource, 0, len(all))
	for _, r := range all {
		rs = append(rs, r)
	}
	snap, err := cachev3.NewSnapshot(strconv.Itoa(gen), map[resource.Type][]types.Resource{resource.EndpointType: rs})
	if err != nil {
		return err
	}
	for i := 0; i < a.nodes; i++ {
		if err := a.c.SetSnapshot(context.Background(), fmt.Sprintf("bench-%d", i), snap); err != nil {
			return err
		}
	}
	return nil
}
func (a *anchor) load(all map[string]types.Resource) error { return a.set(all, 0) }
func (a *anchor) change(name string, r types.Resource, all map[string]types.Resource, gen int) error {
	all[name] = r
	return a.set(all, gen)
}

type row struct {
	impl            string
	clients         int
	initial         time.Duration
	initialCPU      time.Duration
	initialBytes    int64
	changeLatency   []time.Duration // to the last client
	changeCPU       []time.Duration
	changeBytes     []int64 // total over clients
	changeResources []int
}

// measure runs one configuration with fresh server and clients.
func measure(kind string, services, endpoints, clients, updates int) (row, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var im impl
	switch kind {
	case "isthmus":
		s, err := server.New(ctx, server.Config{ClusterID: "bench", Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Registry: prometheus.NewRegistry()})
		if err != nil {
			return row{}, err
		}
		im = &ours{s: s}
	default:
		c := cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)
		im = &anchor{c: c, srv: serverv3.NewServer(ctx, c, nil)}
	}
	im.expectNodes(clients)
	all := map[string]types.Resource{}
	ns := names(services)
	for i, n := range ns {
		all[n] = assignment(n, i, 0, endpoints)
	}
	if err := im.load(all); err != nil {
		return row{}, err
	}
	g := grpc.NewServer(grpc.MaxSendMsgSize(256 << 20))
	im.register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return row{}, err
	}
	go func() { _ = g.Serve(lis) }()
	defer g.Stop()

	r := row{impl: kind, clients: clients}
	events := make(chan event, 1024)
	startCPU, start := procstat.Self(), time.Now()
	for i := 0; i < clients; i++ {
		cmd := exec.Command(os.Args[0], "-client", "-addr", lis.Addr().String(), "-services", strconv.Itoa(services))
		cmd.Env = append(os.Environ(), "BENCH_NODE=bench-"+strconv.Itoa(i))
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			return row{}, err
		}
		if err := cmd.Start(); err != nil {
			return row{}, err
		}
		defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
		go readEvents(out, events)
	}
	// Initial push: every client has all assignments.
	var last time.Time
	for got := 0; got < clients; {
		e := <-events
		if e.resources == services {
			got++
			r.initialBytes += e.bytes
			last = e.at
		}
	}
	r.initial, r.initialCPU = last.Sub(start), procstat.Self()-startCPU
	time.Sleep(500 * time.Millisecond) // ACKs settle
	if profile != "" {
		f, err := os.Create(profile)
		if err != nil {
			return row{}, err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return row{}, err
		}
		defer func() { pprof.StopCPUProfile(); _ = f.Close() }()
	}
	for u := 1; u <= updates; u++ {
		i := (u * 7919) % services
		name := ns[i]
		c0, t0 := procstat.Self(), time.Now()
		if err := im.change(name, assignment(name, i, u, endpoints), all, u); err != nil {
			return row{}, err
		}
		var bytes int64
		res := 0
		for got := 0; got < clients; got++ {
			select {
			case e := <-events:
				bytes += e.bytes
				res += e.resources
				last = e.at
			case <-time.After(30 * time.Second):
				return row{}, fmt.Errorf("update %d: only %d of %d clients answered", u, got, clients)
			}
		}
		r.changeLatency = append(r.changeLatency, last.Sub(t0))
		time.Sleep(300 * time.Millisecond) // let ACK processing land in this update's CPU
		r.changeCPU = append(r.changeCPU, procstat.Self()-c0)
		r.changeBytes = append(r.changeBytes, bytes)
		r.changeResources = append(r.changeResources, res)
	}
	return r, nil
}

type event struct {
	at        time.Time
	resources int
	bytes     int64
}

func readEvents(rd io.Reader, out chan<- event) {
	sc := bufio.NewScanner(rd)
	for sc.Scan() {
		var ns int64
		var e event
		if _, err := fmt.Sscanf(sc.Text(), "resp %d %d %d", &ns, &e.resources, &e.bytes); err == nil {
			e.at = time.Unix(0, ns)
			out <- e
		}
	}
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func medianInt(xs []int64) int64 {
	s := append([]int64(nil), xs...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}
