package xds

import (
	"crypto/x509"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/xds/identity"
	"github.com/isthmus-dev/isthmus/xds/model"
)

// pki is a clusterset root with the intermediates of clusters a, b and c.
type pki struct {
	root *identity.CA
	ca   map[string]*identity.CA
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	root, err := identity.NewRoot(brokerv1.DefaultClustersetDomain, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p := &pki{root: root, ca: map[string]*identity.CA{}}
	for _, c := range []string{"a", "b", "c"} {
		if p.ca[c], err = root.IssueIntermediate(c, 24*time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// gatewayServer is a remote cluster's gateway as a gRPC client sees it:
// mTLS terminated with the presented leaf, a client certificate of the
// clusterset required; it records the client identities it saw.
func (p *pki) gatewayServer(t *testing.T, name string, leaf *identity.Leaf) (*backend, *sync.Map) {
	t.Helper()
	seen := &sync.Map{}
	cfg, err := identity.ServerConfig(staticSVID{leaf}, p.root.TrustBundle())
	if err != nil {
		t.Fatal(err)
	}
	inner := cfg.VerifyPeerCertificate
	cfg.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
		if err := inner(raw, chains); err != nil {
			return err
		}
		seen.Store(serialOf(raw[0]), true)
		return nil
	}
	return startBackend(t, name, grpc.Creds(credentials.NewTLS(cfg))), seen
}

// TestGRPCMTLSThroughGateways: in gateway mode a gRPC client reaches
// another cluster through its gateway in mTLS, with the gateway's SPIFFE
// id checked, a wrong identity refused, and a rotated client certificate
// used for new connections.
func TestGRPCMTLSThroughGateways(t *testing.T) {
	p := newPKI(t)
	local, clusters := threeClusters(model.Gateway)
	e := newEnv(t, local, clusters)

	bLeaf, err := p.ca["b"].IssueLeaf(brokerv1.GatewaySPIFFEID("b", brokerv1.DefaultClustersetDomain), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	gwB, seenB := p.gatewayServer(t, "gateway-b", bLeaf)
	// c's gateway presents a valid clusterset certificate, but not c's
	// gateway identity (a workload of c): the client must refuse it.
	cLeaf, err := p.ca["c"].IssueLeaf(brokerv1.WorkloadSPIFFEID("c", brokerv1.DefaultClustersetDomain, "demo", "impostor"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	gwC, _ := p.gatewayServer(t, "gateway-c", cLeaf)
	clusters["b"].Gateways = []netip.AddrPort{gwB.addr}
	clusters["c"].Gateways = []netip.AddrPort{gwC.addr}
	e.setCluster(clusters["b"])
	e.setCluster(clusters["c"])

	// The client's identity, as files for gRPC's file_watcher provider,
	// renewed by a Rotator as the xDS role does.
	dir := t.TempDir()
	rot, err := identity.NewRotator(p.ca["a"], brokerv1.WorkloadSPIFFEID("a", brokerv1.DefaultClustersetDomain, "demo", "client"), identity.RotatorOptions{TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := rot.Current().WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	creds, err := xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		t.Fatal(err)
	}

	// Only c (same region) at first: its gateway's identity is wrong, so
	// no RPC may succeed.
	e.set(echoKey, echoService(map[string][]model.Endpoint{"c": {{Ready: true}}}))
	cc := e.dial("echo.demo.svc.clusterset.local", e.bootstrap("a", dir), creds)
	r := run(cc, 10)
	if r.failed != 10 {
		t.Fatalf("a gateway with the wrong identity served %v", r.by)
	}
	if !strings.Contains(r.errs[0].Error(), "SAN") && !strings.Contains(r.errs[0].Error(), "match") {
		t.Errorf("refused for another reason than the gateway's identity: %v", r.errs[0])
	}

	// b exports too: c is refused, b (other region) serves over mTLS.
	e.set(echoKey, echoService(map[string][]model.Endpoint{"b": {{Ready: true}}, "c": {{Ready: true}}}))
	waitFor(t, cc, "traffic through b's gateway", func(r tally) bool { return r.by["gateway-b"] == 20 })
	first := countSeen(seenB)
	if first == 0 {
		t.Fatal("b's gateway saw no client certificate")
	}

	// Rotation: a new leaf is written; new connections present it.
	if err := rot.Renew(); err != nil {
		t.Fatal(err)
	}
	if err := rot.Current().WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond) // the provider's refresh_interval is 1 s
	gwB.stop()
	gwB.restart(t) // every connection is new
	waitFor(t, cc, "traffic through b's gateway after the rotation", func(r tally) bool { return r.by["gateway-b"] == 20 })
	if got := countSeen(seenB); got <= first {
		t.Errorf("after rotation b's gateway saw %d client certificates, want a new one", got)
	}
	if _, ok := seenB.Load(rot.Current().Serial()); !ok {
		t.Errorf("the renewed client certificate %s was not presented", rot.Current().Serial())
	}
}

func countSeen(m *sync.Map) int {
	n := 0
	m.Range(func(any, any) bool { n++; return true })
	return n
}

// staticSVID serves one leaf as a go-spiffe SVID source.
type staticSVID struct{ l *identity.Leaf }

func (s staticSVID) GetX509SVID() (*x509svid.SVID, error) { return s.l.GetX509SVID() }

func serialOf(der []byte) string {
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return ""
	}
	return fmt.Sprintf("%x", c.SerialNumber)
}
