package identity

import (
	"context"
	"crypto/x509"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/credentials/tls/certprovider/pemfile"
)

// TestGRPCFileWatcherFollowsRotation points gRPC's own file_watcher
// provider (pemfile, what a proxyless client's bootstrap configures) at
// the files WriteFiles writes: it loads the leaf and the bundle, and after
// a rotation hands out the new leaf.
func TestGRPCFileWatcherFollowsRotation(t *testing.T) {
	cs := newClusterset(t)
	dir := t.TempDir()
	r, err := NewRotator(cs.a, gatewayA, RotatorOptions{TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	written := make(chan error, 10)
	r.Subscribe(func(l *Leaf) { written <- l.WriteFiles(dir) })
	if err := r.Current().WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	p, err := pemfile.NewProvider(pemfile.Options{
		CertFile: filepath.Join(dir, CertFile), KeyFile: filepath.Join(dir, KeyFile), RootFile: filepath.Join(dir, CAFile),
		RefreshDuration: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	served := func() (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		km, err := p.KeyMaterial(ctx)
		if err != nil {
			return "", err
		}
		if len(km.Certs) != 1 || km.Roots == nil {
			return "", fmt.Errorf("key material has %d certificates, roots %v", len(km.Certs), km.Roots != nil)
		}
		leaf, err := x509.ParseCertificate(km.Certs[0].Certificate[0])
		if err != nil {
			return "", err
		}
		// The roots gRPC loaded verify the chain gRPC will present.
		inter, err := x509.ParseCertificate(km.Certs[0].Certificate[1])
		if err != nil {
			return "", err
		}
		ip := x509.NewCertPool()
		ip.AddCert(inter)
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: km.Roots, Intermediates: ip, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			return "", fmt.Errorf("gRPC's roots do not verify gRPC's chain: %w", err)
		}
		return fmt.Sprintf("%x", leaf.SerialNumber), nil
	}
	if got, err := served(); err != nil || got != r.Current().Serial() {
		t.Fatalf("gRPC serves %s, %v; want %s", got, err, r.Current().Serial())
	}
	if err := r.Renew(); err != nil {
		t.Fatal(err)
	}
	if err := <-written; err != nil {
		t.Fatal(err)
	}
	want := r.Current().Serial()
	waitFor(t, "gRPC to load the renewed leaf", func() bool {
		got, err := served()
		return err == nil && got == want
	})
}
