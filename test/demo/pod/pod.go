// Package pod is what runs in the demo's workloads: the echo server (one
// port answering a plain TCP client with a line naming its cluster and
// pod IP, and gRPC's interop TestService), a TCP client that sends a
// request every interval, and the proxyless gRPC client on gRPC-Go's own
// xDS client. On real nodes they are the demo's pods (the command
// test/demo/cmd/isthmus-demo-pod, in an image built from the tree); with
// `isthmus all` as host processes the demo runs the same code in its
// network namespaces. Every request is reported as one JSON line, so the
// demo reads a pod's outcomes from its log.
//
// It imports nothing of Kubernetes, so the pods' image stays small.
package pod

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/peer"
	_ "google.golang.org/grpc/xds" // the xds:/// resolver and balancers
)

// Hello is the first line a client of this package writes: proof that
// the process is one (and not, say, a program that forgot to turn into
// one).
const Hello = "isthmus-demo client"

// Result is one request as a client reports it, a JSON line.
type Result struct {
	Hello    string `json:"hello,omitempty"`
	At       int64  `json:"at,omitempty"`   // when it was sent, Unix ns
	Took     int64  `json:"took,omitempty"` // until it was answered or failed, ns
	Cluster  string `json:"cluster,omitempty"`
	Pod      string `json:"pod,omitempty"`
	ServerID string `json:"serverID,omitempty"` // mTLS: the id the server presented
	ClientID string `json:"clientID,omitempty"` // mTLS: the id the server saw
	Err      string `json:"err,omitempty"`
}

// Serve answers on l until stop is called: a connection whose first byte
// isGRPC accepts goes to gs, any other gets one line naming cluster and
// the address it reached. A client that sends nothing (a bare `nc`, a
// TCP probe) gets the line after a second.
func Serve(l net.Listener, cluster string, gs *grpc.Server, isGRPC func(first byte) bool) (stop func()) {
	grpcL := newHandoff(l.Addr())
	go func() { _ = gs.Serve(grpcL) }()
	go func() {
		defer grpcL.Close()
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go route(conn, cluster, grpcL, isGRPC)
		}
	}()
	return func() { l.Close(); gs.Stop() }
}

func route(conn net.Conn, cluster string, grpcL *handoff, isGRPC func(byte) bool) {
	_ = conn.SetReadDeadline(time.Now().Add(time.Second))
	var first [1]byte
	n, _ := conn.Read(first[:])
	_ = conn.SetReadDeadline(time.Time{})
	if n == 1 && isGRPC(first[0]) {
		grpcL.hand(&replay{Conn: conn, head: first[:]})
		return
	}
	defer conn.Close()
	local, _ := netip.ParseAddrPort(conn.LocalAddr().String())
	fmt.Fprintf(conn, "echo from cluster %s pod %s\n", cluster, local.Addr().Unmap())
}

// IsTLS picks gRPC in TLS: every TLS connection starts with a handshake
// record.
func IsTLS(first byte) bool { return first == 0x16 }

// IsH2C picks plaintext gRPC: HTTP/2's connection preface starts "PRI".
func IsH2C(first byte) bool { return first == 'P' }

// RegisterEcho registers the echo TestService of cluster on s.
func RegisterEcho(s *grpc.Server, cluster string) {
	testgrpc.RegisterTestServiceServer(s, echoService{cluster: cluster})
}

// echoService answers UnaryCall with the cluster (server id), the pod IP
// the client reached (hostname) and the SPIFFE id the client presented
// (username: who the request came from), when it presented one.
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
			resp.Hostname = ap.Addr().Unmap().String()
		}
	}
	if req.GetFillUsername() {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && ti.SPIFFEID != nil {
			resp.Username = ti.SPIFFEID.String()
		}
	}
	return resp, nil
}

// Ask sends one request on conn, a byte that is not a TLS handshake nor
// HTTP/2 (the echo line comes at once), and returns the cluster and pod
// that answered.
func Ask(conn net.Conn, timeout time.Duration) (cluster, pod string, err error) {
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if _, err := conn.Write([]byte("\n")); err != nil {
		return "", "", fmt.Errorf("sending the request: %w", err)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", "", fmt.Errorf("reading the answer: %w", err)
	}
	f := strings.Fields(line)
	if len(f) != 6 || f[0] != "echo" || f[2] != "cluster" {
		return "", "", fmt.Errorf("unexpected answer %q", line)
	}
	return f[3], f[5], nil
}

// Request dials target (host:port; a name is resolved by this process's
// resolver, each time) and asks it once.
func Request(ctx context.Context, target string, timeout time.Duration) (cluster, pod string, err error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", target)
	if err != nil {
		return "", "", err
	}
	defer conn.Close()
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
	}
	return Ask(conn, timeout)
}

// Load sends a request to target every interval, each bounded by
// timeout, and writes a Result line for each on out, Hello first, until
// ctx ends or out fails.
func Load(ctx context.Context, target string, interval, timeout time.Duration, out io.Writer) error {
	enc := json.NewEncoder(out)
	if err := enc.Encode(Result{Hello: Hello}); err != nil {
		return err
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		at := time.Now()
		cluster, pod, err := Request(ctx, target, timeout)
		r := Result{At: at.UnixNano(), Took: int64(time.Since(at)), Cluster: cluster, Pod: pod}
		if err != nil {
			r.Err, r.Cluster = err.Error(), ""
		}
		if ctx.Err() != nil {
			return nil
		}
		if err := enc.Encode(r); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// GRPC timeouts: each RPC after the first is bounded by RPCTimeout; the
// first waits for the channel's start (xDS resources, the first
// connection).
const (
	RPCTimeout      = 500 * time.Millisecond
	FirstRPCTimeout = 20 * time.Second
)

// GRPCClient sends an RPC to xds:///target every interval over creds and
// writes a Result line for each on out, Hello first, until stop is closed
// or out fails. The xDS bootstrap comes from GRPC_XDS_BOOTSTRAP.
func GRPCClient(target string, interval time.Duration, creds credentials.TransportCredentials, stop <-chan struct{}, out io.Writer) error {
	cc, err := grpc.NewClient("xds:///"+target, grpc.WithTransportCredentials(creds))
	if err != nil {
		return fmt.Errorf("dialing xds:///%s: %w", target, err)
	}
	defer cc.Close()
	client := testgrpc.NewTestServiceClient(cc)
	enc := json.NewEncoder(out)
	if err := enc.Encode(Result{Hello: Hello}); err != nil {
		return err
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for first := true; ; first = false {
		if err := enc.Encode(call(client, first)); err != nil {
			return nil // the reader is gone
		}
		select {
		case <-stop:
			return nil
		case <-tick.C:
		}
	}
}

// call sends one UnaryCall asking the server for its cluster, pod and the
// client identity it saw; the first waits for the channel to be ready.
func call(client testgrpc.TestServiceClient, first bool) Result {
	at := time.Now()
	timeout, opts := RPCTimeout, []grpc.CallOption(nil)
	if first {
		timeout, opts = FirstRPCTimeout, []grpc.CallOption{grpc.WaitForReady(true)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var p peer.Peer
	resp, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{FillServerId: true, FillUsername: true},
		append(opts, grpc.Peer(&p))...)
	r := Result{At: at.UnixNano(), Took: int64(time.Since(at))}
	if err != nil {
		r.Err = err.Error()
		return r
	}
	r.Cluster, r.Pod, r.ClientID = resp.GetServerId(), resp.GetHostname(), resp.GetUsername()
	if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && ti.SPIFFEID != nil {
		r.ServerID = ti.SPIFFEID.String()
	}
	return r
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
