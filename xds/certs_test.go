package xds

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/isthmus-dev/isthmus/xds/identity"
	"github.com/isthmus-dev/isthmus/xds/model"
)

// caSecret is the Secret `isthmusctl join` writes for ca, at a resource
// version (the fake apiserver keeps whatever it is given).
func caSecret(t *testing.T, ca *identity.CA, version string) *corev1.Secret {
	t.Helper()
	cert, key, bundle, err := ca.PEM()
	if err != nil {
		t.Fatal(err)
	}
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: "isthmus-system", Name: "isthmus-ca", ResourceVersion: version},
		Data:       map[string][]byte{identity.CertFile: cert, identity.KeyFile: key, identity.CAFile: bundle},
	}
}

// issuerOf is the certificate after the leaf in a PEM chain: the CA that
// issued it.
func issuerOf(t *testing.T, chain []byte) *x509.Certificate {
	t.Helper()
	_, rest := pem.Decode(chain)
	b, _ := pem.Decode(rest)
	if b == nil {
		t.Fatalf("chain has no issuer after the leaf:\n%s", chain)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestServeCertificatesReloadsTheCA: the gateway's and a workload's
// certificates come from the CA Secret at once, and when `isthmusctl
// join` renews the intermediate both are reissued from the new one
// without waiting for their renewal time.
func TestServeCertificatesReloadsTheCA(t *testing.T) {
	p := newPKI(t)
	local, clusters := threeClusters(model.Gateway)
	e := newEnv(t, local, clusters)
	kube := fake.NewClientset(caSecret(t, p.ca["a"], "1"))
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err := e.ctrl.ServeCertificates(ctx, CertificatesConfig{
		Kube: kube, CASecretNamespace: "isthmus-system", CASecretName: "isthmus-ca", TTL: time.Hour,
		Workloads: []WorkloadCert{{Namespace: "demo", ServiceAccount: "client", Dir: dir}},
		Reload:    20 * time.Millisecond, Registry: prometheus.NewRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	gatewayChain := func() []byte {
		e.ctrl.mu.Lock()
		defer e.ctrl.mu.Unlock()
		if e.ctrl.secrets[0] == nil {
			return nil
		}
		return e.ctrl.secrets[0].GetTlsCertificate().GetCertificateChain().GetInlineBytes()
	}
	workloadChain := func() []byte {
		b, err := os.ReadFile(filepath.Join(dir, identity.CertFile))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for what, chain := range map[string][]byte{"gateway": gatewayChain(), "workload": workloadChain()} {
		if chain == nil || !issuerOf(t, chain).Equal(p.ca["a"].Certificate()) {
			t.Fatalf("the %s certificate is not issued by the Secret's CA", what)
		}
	}

	reissuedFrom := func(ca *identity.CA) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !issuerOf(t, gatewayChain()).Equal(ca.Certificate()) || !issuerOf(t, workloadChain()).Equal(ca.Certificate()) {
			if time.Now().After(deadline) {
				t.Fatal("the certificates were not reissued from the renewed CA within 10s")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	renewed, err := p.root.IssueIntermediate("a", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kube.CoreV1().Secrets("isthmus-system").Update(ctx, caSecret(t, renewed, "2"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	reissuedFrom(renewed)

	// A Secret that cannot be read for a while keeps the CA in hand, and
	// the reloads go on.
	if err := kube.CoreV1().Secrets("isthmus-system").Delete(ctx, "isthmus-ca", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	before := workloadChain()
	time.Sleep(100 * time.Millisecond)
	if !bytes.Equal(before, workloadChain()) {
		t.Error("losing the Secret changed the workload certificate")
	}
	again, err := p.root.IssueIntermediate("a", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kube.CoreV1().Secrets("isthmus-system").Create(ctx, caSecret(t, again, "3"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	reissuedFrom(again)
}

// TestServeCertificatesWaitsForTheSecret: without the CA Secret nothing
// is served; ServeCertificates keeps reading until the Secret is there
// (a fresh install can start the pod before its RBAC or the Secret is in
// place), and stopped first, its error says who writes the Secret.
func TestServeCertificatesWaitsForTheSecret(t *testing.T) {
	p := newPKI(t)
	local, clusters := threeClusters(model.Gateway)
	e := newEnv(t, local, clusters)
	cfg := func(kube *fake.Clientset) CertificatesConfig {
		return CertificatesConfig{Kube: kube, CASecretNamespace: "isthmus-system", CASecretName: "isthmus-ca", TTL: time.Hour, Registry: prometheus.NewRegistry()}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	err := e.ctrl.ServeCertificates(ctx, cfg(fake.NewClientset()))
	if err == nil || !strings.Contains(err.Error(), "isthmusctl join") || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("ServeCertificates without the Secret, stopped = %v, want an error naming isthmusctl join", err)
	}

	kube := fake.NewClientset()
	done := make(chan error, 1)
	go func() { done <- e.ctrl.ServeCertificates(context.Background(), cfg(kube)) }()
	time.Sleep(2 * caRetry)
	select {
	case err := <-done:
		t.Fatalf("ServeCertificates returned before the Secret existed: %v", err)
	default:
	}
	if _, err := kube.CoreV1().Secrets("isthmus-system").Create(context.Background(), caSecret(t, p.ca["a"], "1"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Errorf("ServeCertificates once the Secret was written: %v", err)
	}
	e.ctrl.mu.Lock()
	if e.ctrl.secrets[0] == nil || !issuerOf(t, e.ctrl.secrets[0].GetTlsCertificate().GetCertificateChain().GetInlineBytes()).Equal(p.ca["a"].Certificate()) {
		t.Error("the gateway certificate is not issued by the Secret's CA")
	}
	e.ctrl.mu.Unlock()

	// A Secret that holds no usable CA is no start-up race: no retry
	// mends it, so the first read fails at once and says what will.
	bad := caSecret(t, p.ca["a"], "1")
	bad.Data[identity.KeyFile] = []byte("not a key")
	kube = fake.NewClientset(bad)
	ctx, cancel = context.WithTimeout(context.Background(), 4*caRetry)
	defer cancel()
	err = e.ctrl.ServeCertificates(ctx, cfg(kube))
	if err == nil || !strings.Contains(err.Error(), "isthmusctl join") || errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("ServeCertificates with a Secret that holds no CA = %v, want an error naming isthmusctl join, at once", err)
	}
	if n := len(kube.Actions()); n != 1 {
		t.Errorf("ServeCertificates with a Secret that holds no CA made %d reads, want 1: it retried", n)
	}
}
