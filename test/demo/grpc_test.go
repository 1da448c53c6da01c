package demo

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/peer"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/test/demo/pod"
	"github.com/isthmus-dev/isthmus/xds/identity"
)

// echoOnLoopback serves a's echo (plain line and gRPC on one port) on
// loopback with the certificate files in its cert directory, as in the
// demo's pod namespace.
func echoOnLoopback(t *testing.T, m *Member) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.serveOn(l))
	return l.Addr().String()
}

// TestEchoServesLineAndGRPC: one port answers a plain client with the
// echo line and a TLS client with gRPC in mTLS, each side seeing the
// other's SPIFFE id; a rotated certificate is presented on the next
// connection; a client of another clusterset is refused.
func TestEchoServesLineAndGRPC(t *testing.T) {
	root, err := identity.NewRoot(brokerv1.DefaultClustersetDomain, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(ca *identity.CA, cluster, sa string) *identity.Leaf {
		t.Helper()
		inter, err := ca.IssueIntermediate(cluster, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := inter.IssueLeaf(SPIFFEID(cluster, sa), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return leaf
	}
	m := &Member{ID: "a", w: &World{Dir: t.TempDir()}}
	dir := m.certDir(echoSA)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := issue(root, "a", echoSA).WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	addr := echoOnLoopback(t, m)

	line := func(send string) (string, time.Duration) {
		t.Helper()
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		start := time.Now()
		if send != "" {
			if _, err := conn.Write([]byte(send)); err != nil {
				t.Fatal(err)
			}
		}
		got, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil {
			t.Fatalf("reading the echo line: %v", err)
		}
		return got, time.Since(start)
	}
	if got, took := line("\n"); got != "echo from cluster a pod 127.0.0.1\n" || took > 500*time.Millisecond {
		t.Errorf("a plain request got %q after %s, want the echo line at once", got, took)
	}
	if got, took := line(""); got != "echo from cluster a pod 127.0.0.1\n" || took < 900*time.Millisecond {
		t.Errorf("a silent client got %q after %s, want the echo line after a second", got, took)
	}

	client := issue(root, "c", clientSA)
	call := func(leaf *identity.Leaf, bundle *identity.TrustBundle) (*testgrpc.SimpleResponse, credentials.TLSInfo, error) {
		t.Helper()
		cfg, err := identity.ClientConfig(leaf, bundle, SPIFFEID("a", echoSA))
		if err != nil {
			t.Fatal(err)
		}
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var p peer.Peer
		resp, err := testgrpc.NewTestServiceClient(cc).UnaryCall(ctx,
			&testgrpc.SimpleRequest{FillServerId: true, FillUsername: true}, grpc.Peer(&p))
		ti, _ := p.AuthInfo.(credentials.TLSInfo)
		return resp, ti, err
	}
	resp, ti, err := call(client, root.TrustBundle())
	if err != nil {
		t.Fatalf("gRPC over mTLS: %v", err)
	}
	if resp.GetServerId() != "a" || resp.GetHostname() != "127.0.0.1" || resp.GetUsername() != SPIFFEID("c", clientSA) {
		t.Errorf("response %v: want server a, pod 127.0.0.1, client %s", resp, SPIFFEID("c", clientSA))
	}
	if ti.SPIFFEID == nil || ti.SPIFFEID.String() != SPIFFEID("a", echoSA) {
		t.Errorf("the server presented %v, want %s", ti.SPIFFEID, SPIFFEID("a", echoSA))
	}
	firstSerial := ti.State.PeerCertificates[0].SerialNumber

	// Rotation: the files are replaced; the next connection presents the
	// new certificate.
	if err := issue(root, "a", echoSA).WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	_, ti, err = call(client, root.TrustBundle())
	if err != nil {
		t.Fatalf("gRPC after rotation: %v", err)
	}
	if ti.State.PeerCertificates[0].SerialNumber.Cmp(firstSerial) == 0 {
		t.Errorf("after rotation the server still presented serial %x", firstSerial)
	}

	// Another clusterset's client, trusting this one's root so that only
	// the server's check is tested: refused.
	other, err := identity.NewRoot(brokerv1.DefaultClustersetDomain, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := call(issue(other, "c", clientSA), root.TrustBundle()); err == nil {
		t.Error("a client certificate of another clusterset was accepted")
	}
}

// TestClustersetBundle: the roots serve every cluster's trust domain of
// the clusterset and no other.
func TestClustersetBundle(t *testing.T) {
	root, err := identity.NewRoot(brokerv1.DefaultClustersetDomain, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	b := clustersetBundle{root.Certificate()}
	for td, ok := range map[string]bool{"a.clusterset.isthmus": true, "c.clusterset.isthmus": true, "clusterset.isthmus": false, "a.example.org": false, "a.evilclusterset.isthmus": false} {
		_, err := b.GetX509BundleForTrustDomain(mustTD(t, td))
		if (err == nil) != ok {
			t.Errorf("trust domain %s: err %v, want accepted=%v", td, err, ok)
		}
	}
}

// TestReadClientReports: the demo reads its gRPC client's JSON lines, and
// a process that is not the client (a program that forgot ClientMain)
// breaks the load with a hint instead of a 30 s wait.
func TestReadClientReports(t *testing.T) {
	at := time.Unix(1000, 0)
	good := fmt.Sprintf("{\"hello\":%q}\n{\"at\":%d,\"took\":2000000,\"cluster\":\"a\",\"pod\":\"10.241.0.5\",\"serverID\":\"s\",\"clientID\":\"c\"}\n{\"at\":%d,\"err\":\"deadline\"}\n",
		pod.Hello, at.UnixNano(), at.Add(50*time.Millisecond).UnixNano())
	l := &load{}
	l.read(strings.NewReader(good), "log")
	if l.broken != nil || len(l.samples) != 2 {
		t.Fatalf("broken %v, samples %+v", l.broken, l.samples)
	}
	if s := l.samples[0]; s.served != "a" || s.pod != "10.241.0.5" || s.serverID != "s" || s.clientID != "c" || !s.at.Equal(at) || s.took != 2*time.Millisecond {
		t.Errorf("first sample %+v", s)
	}
	if s := l.samples[1]; s.err == nil || s.served != "" {
		t.Errorf("second sample %+v, want a failure", s)
	}
	for _, out := range []string{"usage: isthmus-demo up [--bin dir] | down\n", "", "{\"at\":1}\n"} {
		l := &load{}
		l.read(strings.NewReader(out), "log")
		if l.broken == nil || !strings.Contains(l.broken.Error(), "ClientMain") {
			t.Errorf("output %q: broken = %v, want a hint at ClientMain", out, l.broken)
		}
	}
}

func mustTD(t *testing.T, name string) spiffeid.TrustDomain {
	t.Helper()
	td, err := spiffeid.TrustDomainFromString(name)
	if err != nil {
		t.Fatal(err)
	}
	return td
}
