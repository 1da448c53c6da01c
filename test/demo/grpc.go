package demo

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/peer"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// The echo pods serve gRPC's interop TestService beside the plain echo,
// on the same port: the exported Service has one port, and only a
// single-port service has the bare xDS name
// xds:///echo.demo.svc.clusterset.local. The first byte a client sends
// picks the protocol.

const (
	// echoSA and clientSA are the service accounts whose certificates
	// `isthmus all` keeps on disk: the echo pods' (in a and b) and c's gRPC
	// client's.
	echoSA   = "echo"
	clientSA = "client"
	// The files `isthmus xds --workload-certs` writes into a directory,
	// for gRPC's file_watcher certificate provider.
	certFile = "tls.crt"
	keyFile  = "tls.key"
	caFile   = "ca.crt"
	// tlsHandshake is the record type every TLS connection starts with.
	tlsHandshake = 0x16
)

// SPIFFEID is the identity of a workload of the demo namespace in cluster,
// as the xDS server issues it.
func SPIFFEID(cluster, serviceAccount string) string {
	return brokerv1.WorkloadSPIFFEID(cluster, brokerv1.DefaultClustersetDomain, Namespace, serviceAccount)
}

// certDir is where m's `isthmus all` writes the certificate of the demo's
// service account sa.
func (m *Member) certDir(sa string) string {
	return filepath.Join(m.w.Dir, "node-"+m.ID, "certs", sa)
}

// workloadSA is the service account whose certificate m's isthmus keeps:
// the echo pods' where echo runs, else the gRPC client's.
func (m *Member) workloadSA() string {
	if m.Echo {
		return echoSA
	}
	return clientSA
}

// serveOn serves echo and gRPC on l until the returned stop is called.
func (m *Member) serveOn(l net.Listener) (stop func()) {
	grpcL := newHandoff(l.Addr())
	gs := m.newGRPCEcho()
	go func() { _ = gs.Serve(grpcL) }()
	go func() {
		defer grpcL.Close()
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go m.route(conn, grpcL)
		}
	}()
	return func() { l.Close(); gs.Stop() }
}

// route hands a connection that starts with a TLS handshake to the gRPC
// server and answers anything else with the echo line. A client that
// sends nothing (a bare `nc`) gets the line after a second.
func (m *Member) route(conn net.Conn, grpcL *handoff) {
	_ = conn.SetReadDeadline(time.Now().Add(time.Second))
	var first [1]byte
	n, _ := conn.Read(first[:])
	_ = conn.SetReadDeadline(time.Time{})
	if n == 1 && first[0] == tlsHandshake {
		grpcL.hand(&replay{Conn: conn, head: first[:]})
		return
	}
	defer conn.Close()
	local, _ := netip.ParseAddrPort(conn.LocalAddr().String())
	fmt.Fprintf(conn, "echo from cluster %s pod %s\n", m.ID, local.Addr())
}

// newGRPCEcho is m's gRPC server: the interop TestService over mTLS with
// the certificate m's isthmus writes for demo/echo, requiring a client
// certificate of the clusterset.
func (m *Member) newGRPCEcho() *grpc.Server {
	files := &certFiles{dir: m.certDir(echoSA)}
	creds := credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS13,
		// Per handshake, so a rotated certificate is presented at once.
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			svid, bundle, err := files.load()
			if err != nil {
				return nil, err
			}
			c := tlsconfig.MTLSServerConfig(svid, bundle, tlsconfig.AuthorizeAny())
			c.MinVersion = tls.VersionTLS13
			return c, nil
		},
	})
	s := grpc.NewServer(grpc.Creds(creds))
	testgrpc.RegisterTestServiceServer(s, echoService{cluster: m.ID})
	return s
}

// echoService answers UnaryCall with the cluster (server id), the pod IP
// the client reached (hostname) and the SPIFFE id the client presented
// (username: who the request came from).
type echoService struct {
	testgrpc.UnimplementedTestServiceServer
	cluster string
}

func (s echoService) UnaryCall(ctx context.Context, req *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, errors.New("no peer in the context")
	}
	resp := &testgrpc.SimpleResponse{}
	if req.GetFillServerId() {
		resp.ServerId = s.cluster
	}
	// The interop servers always fill the hostname: here the pod's IP.
	if p.LocalAddr != nil {
		if ap, err := netip.ParseAddrPort(p.LocalAddr.String()); err == nil {
			resp.Hostname = ap.Addr().String()
		}
	}
	if req.GetFillUsername() {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && ti.SPIFFEID != nil {
			resp.Username = ti.SPIFFEID.String()
		}
	}
	return resp, nil
}

// certFiles reads a certificate directory, again only when a file changed.
type certFiles struct {
	dir    string
	mu     sync.Mutex
	stamp  string
	svid   *x509svid.SVID
	bundle clustersetBundle
}

func (f *certFiles) load() (*x509svid.SVID, clustersetBundle, error) {
	var stamp strings.Builder
	for _, n := range []string{certFile, keyFile, caFile} {
		st, err := os.Stat(filepath.Join(f.dir, n))
		if err != nil {
			return nil, nil, fmt.Errorf("the workload certificate (written by isthmus --xds-workload-certs): %w", err)
		}
		fmt.Fprintf(&stamp, "%d/%d;", st.ModTime().UnixNano(), st.Size())
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if stamp.String() == f.stamp {
		return f.svid, f.bundle, nil
	}
	// A pair from two generations fails here and is read again on the
	// next handshake.
	svid, err := x509svid.Load(filepath.Join(f.dir, certFile), filepath.Join(f.dir, keyFile))
	if err != nil {
		return nil, nil, fmt.Errorf("loading the workload certificate from %s: %w", f.dir, err)
	}
	roots, err := x509bundle.Load(svid.ID.TrustDomain(), filepath.Join(f.dir, caFile))
	if err != nil {
		return nil, nil, fmt.Errorf("loading the clusterset roots from %s: %w", f.dir, err)
	}
	f.stamp, f.svid, f.bundle = stamp.String(), svid, roots.X509Authorities()
	return f.svid, f.bundle, nil
}

// clustersetBundle is the clusterset's roots, the bundle of every
// cluster's trust domain <cluster>.<clusterset domain>.
type clustersetBundle []*x509.Certificate

func (b clustersetBundle) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if !strings.HasSuffix(td.Name(), "."+brokerv1.DefaultClustersetDomain) {
		return nil, fmt.Errorf("trust domain %q is not of the clusterset %s", td.Name(), brokerv1.DefaultClustersetDomain)
	}
	return x509bundle.FromX509Authorities(td, b), nil
}

// handoff is a listener whose connections another accept loop hands it.
type handoff struct {
	addr  net.Addr
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newHandoff(addr net.Addr) *handoff {
	return &handoff{addr: addr, conns: make(chan net.Conn), done: make(chan struct{})}
}

func (h *handoff) hand(c net.Conn) {
	select {
	case h.conns <- c:
	case <-h.done:
		c.Close()
	}
}

func (h *handoff) Accept() (net.Conn, error) {
	select {
	case c := <-h.conns:
		return c, nil
	case <-h.done:
		return nil, net.ErrClosed
	}
}

func (h *handoff) Close() error {
	h.once.Do(func() { close(h.done) })
	return nil
}

func (h *handoff) Addr() net.Addr { return h.addr }

// replay is a connection whose first bytes were read already.
type replay struct {
	net.Conn
	head []byte
}

func (r *replay) Read(b []byte) (int, error) {
	if len(r.head) > 0 {
		n := copy(b, r.head)
		r.head = r.head[n:]
		return n, nil
	}
	return r.Conn.Read(b)
}
