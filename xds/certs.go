package xds

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/xds/identity"
)

// DefaultCAReload is how often the CA Secret is read again by default:
// `isthmusctl join` renews the intermediate long before it expires, so a
// minute's delay costs nothing, and a watch would need list rights on
// every Secret of the namespace.
const DefaultCAReload = time.Minute

// CertificatesConfig is what ServeCertificates needs.
type CertificatesConfig struct {
	// Kube reads the CA Secret.
	Kube kubernetes.Interface
	// CASecretNamespace and CASecretName name the cluster's intermediate
	// CA, which `isthmusctl join` writes.
	CASecretNamespace, CASecretName string
	// TTL is every leaf's lifetime; each is renewed at half of it.
	TTL time.Duration
	// Workloads are the identities whose certificates are kept as files,
	// for proxyless gRPC clients' file_watcher provider.
	Workloads []WorkloadCert
	// Serving, when set, is the xDS server's own identity: a certificate
	// with its SPIFFE id and these DNS names, for ServingTLS.
	Serving *ServingCert
	// Reload is how often the Secret is read again (0: DefaultCAReload).
	Reload time.Duration
	// Registry receives the certificate metrics.
	Registry prometheus.Registerer
}

// WorkloadCert is one workload identity whose certificate is written to a
// directory (tls.crt, tls.key, ca.crt).
type WorkloadCert struct {
	Namespace, ServiceAccount, Dir string
}

// ServingCert is the xDS server's identity: its ServiceAccount's SPIFFE
// id, and the DNS names clients dial it by (the Service's names), which
// gRPC's and Envoy's clients check.
type ServingCert struct {
	Namespace, ServiceAccount string
	DNSNames                  []string
}

// The first read of the CA Secret is retried after caRetry, then twice
// as long each time up to maxCARetry.
const caRetry, maxCARetry = 500 * time.Millisecond, 10 * time.Second

// ServingTLS is the TLS configuration of the ADS listener: the serving
// certificate ServeCertificates keeps current (each handshake takes the
// newest), TLS 1.2 at least.
func (c *Controller) ServingTLS() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			if cert := c.serving.Load(); cert != nil {
				return cert, nil
			}
			return nil, errors.New("the xDS server has no serving certificate yet")
		},
	}
}

// ServeCertificates issues the gateway's certificate (served over SDS
// through SetGatewayCertificates) and each workload's (written to its
// directory) from the cluster's intermediate CA, and renews them: at half
// their lifetime, and all at once when the CA Secret changes. It returns
// once the first certificates are in place; the renewals run until ctx
// ends.
func (c *Controller) ServeCertificates(ctx context.Context, cfg CertificatesConfig) error {
	cas := &caSource{kube: cfg.Kube, ns: cfg.CASecretNamespace, name: cfg.CASecretName, log: c.log}
	// The first read is retried: in a fresh install it can race the
	// RBAC created beside the pod, or isthmusctl join writing the Secret.
	// A Secret that is there but holds no usable CA ends it: waiting does
	// not mend that, a new join does.
	for delay := caRetry; ; delay = min(2*delay, maxCARetry) {
		err := cas.load(ctx)
		if err == nil {
			break
		}
		if errors.As(err, new(unusableCA)) {
			return err
		}
		c.log.Warn("no intermediate CA yet; retrying", "err", err, "retry_in", delay)
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (stopped: %w)", err, ctx.Err())
		case <-time.After(delay):
		}
	}
	reload := cfg.Reload
	if reload <= 0 {
		reload = DefaultCAReload
	}
	go cas.watch(ctx, reload)
	metrics := identity.NewMetrics(cfg.Registry)
	cluster, domain := c.local.ClusterID, c.local.ClustersetDomain
	if err := cas.rotate(ctx, brokerv1.GatewaySPIFFEID(cluster, domain), cfg.TTL, metrics, func(l *identity.Leaf) {
		c.SetGatewayCertificates(ctx, l.CertChainPEM, l.KeyPEM, l.BundlePEM)
		c.log.Info("gateway certificate in place", "leaf", l)
	}); err != nil {
		return err
	}
	if sv := cfg.Serving; sv != nil {
		id := brokerv1.WorkloadSPIFFEID(cluster, domain, sv.Namespace, sv.ServiceAccount)
		if err := cas.rotateWith(ctx, servingIssuer{cas, sv.DNSNames}, id, cfg.TTL, metrics, func(l *identity.Leaf) {
			cert := l.Certificate
			c.serving.Store(&cert)
			c.log.Info("xDS serving certificate in place", "leaf", l, "dns_names", sv.DNSNames)
		}); err != nil {
			return err
		}
	}
	for _, w := range cfg.Workloads {
		id, dir := brokerv1.WorkloadSPIFFEID(cluster, domain, w.Namespace, w.ServiceAccount), w.Dir
		if err := cas.rotate(ctx, id, cfg.TTL, metrics, func(l *identity.Leaf) {
			if err := l.WriteFiles(dir); err != nil {
				c.log.Error("writing a workload certificate", "id", id, "dir", dir, "err", err)
				return
			}
			c.log.Info("workload certificate written", "leaf", l, "dir", dir)
		}); err != nil {
			return err
		}
	}
	return nil
}

// caSource keeps the cluster's intermediate CA from the Secret `isthmusctl
// join` writes, reloading it when join renews it, and issues leaves from
// whichever is current.
type caSource struct {
	kube      kubernetes.Interface
	ns, name  string
	log       *slog.Logger
	mu        sync.Mutex
	ca        *identity.CA
	version   string
	onChanged []func()
}

func (s *caSource) load(ctx context.Context) error {
	sec, err := s.kube.CoreV1().Secrets(s.ns).Get(ctx, s.name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("reading the cluster's intermediate CA from Secret %s/%s (written by isthmusctl join): %w", s.ns, s.name, err)
	}
	s.mu.Lock()
	same := sec.ResourceVersion == s.version
	s.mu.Unlock()
	if same {
		return nil
	}
	ca, err := identity.LoadCA(sec.Data[identity.CertFile], sec.Data[identity.KeyFile], sec.Data[identity.CAFile])
	if err != nil {
		return unusableCA{fmt.Errorf("loading the intermediate CA from Secret %s/%s (run isthmusctl join for this cluster again): %w", s.ns, s.name, err)}
	}
	s.mu.Lock()
	first := s.ca == nil
	s.ca, s.version = ca, sec.ResourceVersion
	hooks := append([]func(){}, s.onChanged...)
	s.mu.Unlock()
	if !first {
		s.log.Info("the cluster's intermediate CA changed; renewing every leaf", "ca", ca)
		for _, h := range hooks {
			h()
		}
	}
	return nil
}

// unusableCA is a CA Secret that was read but holds no CA we can issue
// from.
type unusableCA struct{ err error }

func (e unusableCA) Error() string { return e.err.Error() }
func (e unusableCA) Unwrap() error { return e.err }

// IssueLeaf issues from the current CA.
func (s *caSource) IssueLeaf(id string, ttl time.Duration) (*identity.Leaf, error) {
	s.mu.Lock()
	ca := s.ca
	s.mu.Unlock()
	return ca.IssueLeaf(id, ttl)
}

// watch reloads the Secret every interval until ctx ends; a failed read
// keeps the CA in hand.
func (s *caSource) watch(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := s.load(ctx); err != nil {
				s.log.Warn("reloading the intermediate CA; keeping the current one", "err", err)
			}
		}
	}
}

// rotate runs a Rotator for id, calling use with every leaf (the first at
// once), renewing all leaves when the CA changes.
func (s *caSource) rotate(ctx context.Context, id string, ttl time.Duration, metrics *identity.Metrics, use func(*identity.Leaf)) error {
	return s.rotateWith(ctx, s, id, ttl, metrics, use)
}

// rotateWith is rotate with leaves from issuer (which reads this source's
// current CA).
func (s *caSource) rotateWith(ctx context.Context, issuer identity.Issuer, id string, ttl time.Duration, metrics *identity.Metrics, use func(*identity.Leaf)) error {
	r, err := identity.NewRotator(issuer, id, identity.RotatorOptions{TTL: ttl, Logger: s.log, Metrics: metrics})
	if err != nil {
		return fmt.Errorf("issuing the certificate of %s: %w", id, err)
	}
	r.Subscribe(use)
	use(r.Current())
	s.mu.Lock()
	s.onChanged = append(s.onChanged, func() {
		if err := r.Renew(); err != nil {
			s.log.Error("renewing a leaf after the CA changed", "id", id, "err", err)
		}
	})
	s.mu.Unlock()
	go func() { _ = r.Run(ctx) }()
	return nil
}

// servingIssuer issues serving certificates (with DNS names) from the
// current CA.
type servingIssuer struct {
	s        *caSource
	dnsNames []string
}

func (i servingIssuer) IssueLeaf(id string, ttl time.Duration) (*identity.Leaf, error) {
	i.s.mu.Lock()
	ca := i.s.ca
	i.s.mu.Unlock()
	return ca.IssueServing(id, i.dnsNames, ttl)
}
