package demo

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc/credentials"
	xdscreds "google.golang.org/grpc/credentials/xds"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/test/demo/pod"
)

// The proxyless gRPC client runs in c's node namespace, where c's xDS
// server listens on loopback. gRPC dials from threads of its own choosing,
// so it cannot share the demo's process (whose threads are in the host
// namespace): the demo runs its own program again under `ip netns exec`
// with grpcClientEnv set, and ClientMain turns that run into the client.

// grpcClientEnv carries the client's spec (JSON) to the child process.
const grpcClientEnv = "ISTHMUS_DEMO_GRPC_CLIENT"

const (
	xdsAddr = "127.0.0.1:15010"
)

// grpcClientSpec is what the demo asks of its gRPC client process.
type grpcClientSpec struct {
	Target   string        `json:"target"`
	Interval time.Duration `json:"interval"`
}

// ClientMain makes this process the demo's gRPC client when the demo
// started it as one, and exits when that client ends; otherwise it returns
// at once. A program that runs the demo (isthmus-demo, the test binary)
// calls it first thing.
func ClientMain() {
	spec, ok := os.LookupEnv(grpcClientEnv)
	if !ok {
		return
	}
	if err := runGRPCClient(spec, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "isthmus demo gRPC client:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// runGRPCClient sends an RPC every interval to the spec's xds:/// target
// in mTLS and reports each on out, until stop reaches its end (the demo
// closed the pipe) or out fails.
func runGRPCClient(specJSON string, stop io.Reader, out io.Writer) error {
	var spec grpcClientSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		return fmt.Errorf("the client spec %s=%q: %w", grpcClientEnv, specJSON, err)
	}
	creds, err := xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: noTLS{}})
	if err != nil {
		return err
	}
	stopped := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, stop); close(stopped) }()
	return pod.GRPCClient(spec.Target, spec.Interval, creds, stopped, out)
}

// noTLS is the xDS credentials' fallback, used when the xDS cluster
// carries no TLS settings: the demo's service must be reached in mTLS, so
// it refuses with the reason.
type noTLS struct{}

var errNoTLS = errors.New("the xDS cluster has no TLS settings: the import lacks " + brokerv1.AnnotationUpstreamTLS + ": mtls")

func (noTLS) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errNoTLS
}
func (noTLS) ServerHandshake(net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errNoTLS
}
func (noTLS) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "none"}
}
func (noTLS) Clone() credentials.TransportCredentials { return noTLS{} }
func (noTLS) OverrideServerName(string) error         { return nil }

// writeBootstrap writes the gRPC xDS bootstrap of m's client: m's xDS
// server, the node metadata that selects the gRPC view of cluster m, and
// the file_watcher provider on the client certificate m's isthmus writes.
func (m *Member) writeBootstrap() (string, error) {
	dir := m.certDir(clientSA)
	b := map[string]any{
		"xds_servers": []any{map[string]any{"server_uri": xdsAddr, "channel_creds": []any{map[string]string{"type": "insecure"}}}},
		"node": map[string]any{
			"id":       "isthmus-demo-grpc-client-" + m.ID,
			"locality": map[string]string{"region": m.Region, "zone": m.Zone},
			"metadata": map[string]string{"isthmus.dev/role": "grpc", "isthmus.dev/cluster": m.ID},
		},
		"certificate_providers": map[string]any{"default": map[string]any{"plugin_name": "file_watcher", "config": map[string]string{
			"certificate_file":    filepath.Join(dir, certFile),
			"private_key_file":    filepath.Join(dir, keyFile),
			"ca_certificate_file": filepath.Join(dir, caFile),
			"refresh_interval":    "10s",
		}}},
	}
	data, err := json.MarshalIndent(b, "", "  ")
	if err != nil {
		return "", err
	}
	path := filepath.Join(m.w.Dir, "node-"+m.ID, "grpc-bootstrap.json")
	return path, os.WriteFile(path, data, 0o644)
}

// GRPCClientLog is the log file of the member's gRPC client process
// (gRPC's own errors), when it has one.
func (m *Member) GRPCClientLog() string {
	return filepath.Join(m.w.Dir, "node-"+m.ID, "grpc-client.log")
}

// startGRPCLoad starts m's gRPC client in m's node namespace, sending an
// RPC to xds:///FQDN every loadInterval, and records each outcome.
func (m *Member) startGRPCLoad() (*load, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("finding this program to run the gRPC client: %w", err)
	}
	boot, err := m.writeBootstrap()
	if err != nil {
		return nil, fmt.Errorf("writing c's gRPC bootstrap: %w", err)
	}
	spec, _ := json.Marshal(grpcClientSpec{Target: FQDN, Interval: loadInterval})
	logf, err := os.OpenFile(m.GRPCClientLog(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("ip", "netns", "exec", m.Node, self)
	cmd.Env = append(os.Environ(), grpcClientEnv+"="+string(spec), "GRPC_XDS_BOOTSTRAP="+boot)
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting the gRPC client in %s: %w", m.Node, err)
	}
	l := &load{done: make(chan struct{})}
	var once sync.Once
	l.cancel = func() {
		once.Do(func() {
			stdin.Close() // the client ends after its current RPC
			go func() {
				select {
				case <-l.done:
				case <-time.After(5 * time.Second):
					_ = cmd.Process.Kill()
				}
			}()
		})
	}
	go func() {
		defer close(l.done)
		defer logf.Close()
		l.read(stdout, logf.Name())
		if err := cmd.Wait(); err != nil {
			l.fail(fmt.Errorf("the gRPC client exited: %w (log %s)", err, logf.Name()))
		}
	}()
	return l, nil
}

// read records the child's reports until its output ends.
func (l *load) read(r io.Reader, logName string) {
	notClient := func(said string) {
		l.fail(fmt.Errorf("the gRPC client process said %q, not its hello: the program running the demo must call demo.ClientMain first (log %s)", said, logName))
		_, _ = io.Copy(io.Discard, r)
	}
	sc := bufio.NewScanner(r)
	hello := false
	for sc.Scan() {
		var res pod.Result
		if err := json.Unmarshal(sc.Bytes(), &res); err != nil || !hello && res.Hello != pod.Hello {
			notClient(sc.Text())
			return
		}
		if !hello {
			hello = true
			continue
		}
		s := sample{at: time.Unix(0, res.At), took: time.Duration(res.Took), served: res.Cluster, pod: res.Pod, serverID: res.ServerID, clientID: res.ClientID}
		if res.Err != "" {
			s.err, s.served = errors.New(res.Err), ""
		}
		l.add(s)
	}
	if !hello {
		notClient("")
	}
}

// grpcStep starts c's gRPC client and checks that a (same region) serves
// it in mTLS: a's pod presenting a's echo identity, a seeing c's client
// identity. The client keeps running for the failover steps.
func (w *World) grpcStep(ctx context.Context, r *Results) (*load, error) {
	c := w.Member("c")
	before := w.wgTransfer(c)
	t := time.Now()
	var gl *load
	var err error
	if w.OnNodes() {
		gl, err = c.startGRPCPod(ctx)
	} else {
		gl, err = c.startGRPCLoad()
	}
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithTimeout(ctx, stepTimeoutShort)
	defer cancel()
	first, err := gl.waitServedBy(sctx, t, "a", 5)
	if err == nil && w.mTLS() {
		err = checkIdentities(gl.since(t))
	}
	if err != nil {
		gl.stop()
		return nil, fmt.Errorf("c's gRPC client with xds:///%s: %w", FQDN, err)
	}
	sent := w.wgTransfer(c) - before
	if sent <= 0 {
		gl.stop()
		return nil, fmt.Errorf("c's WireGuard device sent nothing while its gRPC client was served by a: the RPCs did not cross the tunnel")
	}
	run := gl.since(first)[:5]
	s, last := run[0], run[len(run)-1]
	// From starting the client to the first answer: the process, the xDS
	// resources from c's server, the first mTLS connection, the RPC.
	took := s.at.Add(s.took).Sub(t)
	failed, total := failures(gl.since(t), t, first)
	r.Steps = append(r.Steps, Step{Name: StepXDS, Took: took, Failed: failed, Total: total, ServedBy: s.served,
		ServerID: s.serverID, ClientID: s.clientID, Note: fmt.Sprintf("mTLS to a's pod %s over WireGuard (+%d B sent); later RPCs %s",
			s.pod, sent, last.took.Round(100*time.Microsecond))})
	if !w.mTLS() {
		step := &r.Steps[len(r.Steps)-1]
		step.Note = fmt.Sprintf("plaintext to a's pod %s over WireGuard (+%d B sent); xDS over TLS with a token; later RPCs %s",
			s.pod, sent, last.took.Round(100*time.Microsecond))
		w.say("from c: gRPC client pod with xds:///%s (xDS from the chart's isthmus-xds over TLS, a projected token of audience isthmus-xds) served by %s (same region), pod %s over WireGuard (+%d bytes on c's tunnel device): first answer %s after its Deployment was created (its first RPC took %s), later RPCs %s",
			FQDN, s.served, s.pod, sent, took.Round(time.Millisecond), s.took.Round(time.Millisecond), last.took.Round(100*time.Microsecond))
		return gl, nil
	}
	w.say("from c: gRPC client with xds:///%s (mTLS, identities from our xDS server) served by %s (same region), pod %s over WireGuard (+%d bytes on c's tunnels): first answer %s after the client started (its first RPC took %s), later RPCs %s; the client verified %s, the pod saw %s",
		FQDN, s.served, s.pod, sent, took.Round(time.Millisecond), s.took.Round(time.Millisecond), last.took.Round(100*time.Microsecond), s.serverID, s.clientID)
	return gl, nil
}

// checkIdentities checks every answered RPC's mTLS identities: the pod
// presented its own cluster's echo identity and saw c's client identity.
func checkIdentities(samples []sample) error {
	n := 0
	for _, s := range samples {
		if s.err != nil {
			continue
		}
		n++
		if want := SPIFFEID(s.served, echoSA); s.serverID != want {
			return fmt.Errorf("an RPC served by %s (pod %s) came from a server presenting %q, want %q", s.served, s.pod, s.serverID, want)
		}
		if want := SPIFFEID("c", clientSA); s.clientID != want {
			return fmt.Errorf("the server in %s (pod %s) saw the client as %q, want %q", s.served, s.pod, s.clientID, want)
		}
	}
	if n == 0 {
		return errors.New("no RPC was answered")
	}
	return nil
}
