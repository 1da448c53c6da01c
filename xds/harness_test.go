package xds

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	grpcxds "google.golang.org/grpc/xds"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/isthmus-dev/isthmus/xds/identity"
	"github.com/isthmus-dev/isthmus/xds/model"
	"github.com/isthmus-dev/isthmus/xds/server"
	"github.com/isthmus-dev/isthmus/xds/source"
)

// memModels is a clusterset held in memory: the controller's input in
// tests of translation and serving, where Kubernetes is not the subject
// (the source has its own tests against real apiservers).
type memModels struct {
	mu       sync.Mutex
	services map[model.Key]*model.Service
	clusters map[string]*model.Cluster
}

func (m *memModels) Service(k model.Key) *model.Service {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.services[k]
	if s == nil {
		return nil
	}
	cp := *s
	cp.Endpoints = map[string][]model.Endpoint{}
	for c, eps := range s.Endpoints {
		cp.Endpoints[c] = append([]model.Endpoint(nil), eps...)
	}
	return &cp
}

func (m *memModels) Clusters() map[string]*model.Cluster {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]*model.Cluster{}
	for id, c := range m.clusters {
		cp := *c
		out[id] = &cp
	}
	return out
}

// env is an xDS server on loopback fed from memModels.
type env struct {
	t      *testing.T
	addr   string
	models *memModels
	ctrl   *Controller
	srv    *server.Server
	reg    *prometheus.Registry
}

func newEnv(t *testing.T, local model.Local, clusters map[string]*model.Cluster) *env {
	return newEnvWith(t, local, clusters, server.Config{}, false)
}

// newEnvWith is newEnv with the server's authentication fields from cfg,
// serving over TLS (ServingTLS: the certificate ServeCertificates keeps)
// when tls is set.
func newEnvWith(t *testing.T, local model.Local, clusters map[string]*model.Cluster, cfg server.Config, tls bool) *env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg := prometheus.NewRegistry()
	cfg.ClusterID, cfg.Log, cfg.Registry = local.ClusterID, log, reg
	srv, err := server.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	m := &memModels{services: map[model.Key]*model.Service{}, clusters: clusters}
	ctrl, err := New(Config{Local: local, Models: m, Server: srv, Registry: reg, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	var opts []grpc.ServerOption
	if tls {
		opts = append(opts, grpc.Creds(credentials.NewTLS(ctrl.ServingTLS())))
	}
	g := grpc.NewServer(opts...)
	srv.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	e := &env{t: t, addr: lis.Addr().String(), models: m, ctrl: ctrl, srv: srv, reg: reg}
	ctrl.Apply(ctx, source.Change{Clusters: true})
	return e
}

// set replaces a service (nil deletes it) and applies the change.
func (e *env) set(k model.Key, s *model.Service) {
	e.models.mu.Lock()
	if s == nil {
		delete(e.models.services, k)
	} else {
		e.models.services[k] = s
	}
	e.models.mu.Unlock()
	e.ctrl.Apply(context.Background(), source.Change{Services: []model.Key{k}})
}

// setCluster changes a cluster and applies the change.
func (e *env) setCluster(c *model.Cluster) {
	e.models.mu.Lock()
	e.models.clusters[c.ID] = c
	e.models.mu.Unlock()
	e.ctrl.Apply(context.Background(), source.Change{Clusters: true})
}

// bootstrap is a gRPC xDS bootstrap for a client of cluster in this
// env, with a file_watcher provider when certDir is set.
func (e *env) bootstrap(cluster, certDir string) []byte {
	providers := ""
	if certDir != "" {
		providers = fmt.Sprintf(`,"certificate_providers":{"default":{"plugin_name":"file_watcher","config":{"certificate_file":%q,"private_key_file":%q,"ca_certificate_file":%q,"refresh_interval":"1s"}}}`,
			certDir+"/"+identity.CertFile, certDir+"/"+identity.KeyFile, certDir+"/"+identity.CAFile)
	}
	return []byte(fmt.Sprintf(`{"xds_servers":[{"server_uri":%q,"channel_creds":[{"type":"insecure"}]}],
"node":{"id":"test-%s","metadata":{%q:"grpc",%q:%q}}%s}`, e.addr, cluster, server.MetadataRole, server.MetadataCluster, cluster, providers))
}

// dial connects a proxyless gRPC client to target through this env.
func (e *env) dial(target string, bootstrap []byte, creds credentials.TransportCredentials) *grpc.ClientConn {
	e.t.Helper()
	r, err := grpcxds.NewXDSResolverWithConfigForTesting(bootstrap)
	if err != nil {
		e.t.Fatal(err)
	}
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	cc, err := grpc.NewClient("xds:///"+target, grpc.WithResolvers(r), grpc.WithTransportCredentials(creds))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// backend is a real gRPC server answering /echo.Echo/Ping with its name
// in a header, or failing every RPC while failing is set.
type backend struct {
	name    string
	addr    netip.AddrPort
	opts    []grpc.ServerOption
	mu      sync.Mutex
	srv     *grpc.Server
	failing bool
}

func startBackend(t *testing.T, name string, opts ...grpc.ServerOption) *backend {
	t.Helper()
	b := &backend{name: name, opts: opts}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.addr = netip.MustParseAddrPort(lis.Addr().String())
	b.serve(lis)
	t.Cleanup(b.stop)
	return b
}

func (b *backend) serve(lis net.Listener) {
	srv := grpc.NewServer(append(b.opts, grpc.UnknownServiceHandler(func(_ any, st grpc.ServerStream) error {
		if err := st.RecvMsg(&emptypb.Empty{}); err != nil {
			return err
		}
		b.mu.Lock()
		failing := b.failing
		b.mu.Unlock()
		if failing {
			return status.Error(codes.Unavailable, b.name+" is failing")
		}
		_ = st.SetHeader(metadata.Pairs("backend", b.name))
		return st.SendMsg(&emptypb.Empty{})
	}))...)
	b.mu.Lock()
	b.srv = srv
	b.mu.Unlock()
	go func() { _ = srv.Serve(lis) }()
}

// stop kills the backend hard: connections closed, the port refuses.
func (b *backend) stop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.srv != nil {
		b.srv.Stop()
		b.srv = nil
	}
}

// restart serves again on the same port.
func (b *backend) restart(t *testing.T) {
	t.Helper()
	lis, err := net.Listen("tcp", b.addr.String())
	if err != nil {
		t.Fatalf("restarting %s on %s: %v", b.name, b.addr, err)
	}
	b.serve(lis)
}

func (b *backend) setFailing(f bool) {
	b.mu.Lock()
	b.failing = f
	b.mu.Unlock()
}

// endpoint is the backend as a model endpoint of port name "grpc".
func (b *backend) endpoint(ready bool) model.Endpoint {
	return model.Endpoint{Address: b.addr.Addr(), Ports: map[string]int32{"grpc": int32(b.addr.Port())}, Ready: ready}
}

// tally counts which backend served each of n sequential RPCs, and the
// failures.
type tally struct {
	by     map[string]int
	first  map[string]time.Time // when each backend first answered
	failed int
	errs   []error
}

func ping(cc *grpc.ClientConn, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var md metadata.MD
	err := cc.Invoke(ctx, "/echo.Echo/Ping", &emptypb.Empty{}, &emptypb.Empty{}, grpc.Header(&md))
	if err != nil {
		return "", err
	}
	if v := md.Get("backend"); len(v) == 1 {
		return v[0], nil
	}
	return "", fmt.Errorf("no backend header")
}

func run(cc *grpc.ClientConn, n int) tally {
	t := tally{by: map[string]int{}, first: map[string]time.Time{}}
	for i := 0; i < n; i++ {
		who, err := ping(cc, 2*time.Second)
		if err != nil {
			t.failed++
			if len(t.errs) < 3 {
				t.errs = append(t.errs, err)
			}
			continue
		}
		if t.by[who] == 0 {
			t.first[who] = time.Now()
		}
		t.by[who]++
	}
	return t
}

// waitFor pings until pred holds for a whole batch or the deadline passes.
func waitFor(t *testing.T, cc *grpc.ClientConn, what string, pred func(tally) bool) tally {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var last tally
	for time.Now().Before(deadline) {
		last = run(cc, 20)
		if pred(last) {
			return last
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: not seen within 20 s; last batch %v, failed %d %v", what, last.by, last.failed, last.errs)
	return last
}
