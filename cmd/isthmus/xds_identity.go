package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	xdsidentity "github.com/isthmus-dev/isthmus/xds/identity"
)

// caSource keeps the cluster's intermediate CA from the Secret `isthmusctl
// join` writes, reloading it when join renews it, and issues leaves from
// whichever is current.
type caSource struct {
	kube      kubernetes.Interface
	ns, name  string
	log       *slog.Logger
	mu        sync.Mutex
	ca        *xdsidentity.CA
	version   string
	onChanged []func()
}

func newCASource(ctx context.Context, kube kubernetes.Interface, ref string, log *slog.Logger) (*caSource, error) {
	ns, name, err := namespacedName("ca-secret", ref)
	if err != nil {
		return nil, err
	}
	s := &caSource{kube: kube, ns: ns, name: name, log: log}
	if err := s.load(ctx); err != nil {
		return nil, err
	}
	return s, nil
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
	ca, err := xdsidentity.LoadCA(sec.Data[xdsidentity.CertFile], sec.Data[xdsidentity.KeyFile], sec.Data[xdsidentity.CAFile])
	if err != nil {
		return fmt.Errorf("loading the intermediate CA from Secret %s/%s: %w", s.ns, s.name, err)
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

// IssueLeaf issues from the current CA.
func (s *caSource) IssueLeaf(id string, ttl time.Duration) (*xdsidentity.Leaf, error) {
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
func (s *caSource) rotate(ctx context.Context, id string, ttl time.Duration, metrics *xdsidentity.Metrics, use func(*xdsidentity.Leaf)) error {
	r, err := xdsidentity.NewRotator(s, id, xdsidentity.RotatorOptions{TTL: ttl, Logger: s.log, Metrics: metrics})
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

// workloadCert is one --workload-certs entry: whose certificate, where.
type workloadCert struct{ namespace, serviceAccount, dir string }

// workloadCerts parses --workload-certs NS/SA=DIR entries.
func workloadCerts(entries []string) ([]workloadCert, error) {
	var out []workloadCert
	for _, e := range entries {
		who, dir, ok := strings.Cut(e, "=")
		ns, sa, ok2 := strings.Cut(who, "/")
		if !ok || !ok2 || ns == "" || sa == "" || dir == "" {
			return nil, fmt.Errorf("--workload-certs %q: want NAMESPACE/SERVICEACCOUNT=DIRECTORY", e)
		}
		out = append(out, workloadCert{ns, sa, dir})
	}
	return out, nil
}

// multiFlag is a repeatable string flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }
