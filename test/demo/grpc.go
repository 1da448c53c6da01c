package demo

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/test/demo/pod"
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

// serveOn serves echo and gRPC in mTLS on l until the returned stop is
// called.
func (m *Member) serveOn(l net.Listener) (stop func()) {
	return pod.Serve(l, m.ID, m.newGRPCEcho(), pod.IsTLS)
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
	pod.RegisterEcho(s, m.ID)
	return s
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
