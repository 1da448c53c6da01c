package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/setup"
)

// legacyMaterial is a root and alpha's intermediate as releases before
// the leading-dot fix made them: the root's URI constraint is the bare
// clusterset domain.
func legacyMaterial(t *testing.T) (root, alpha setup.CAMaterial) {
	t.Helper()
	mk := func(tmpl *x509.Certificate, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey, setup.CAMaterial) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if parent == nil {
			parent, parentKey = tmpl, key
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return cert, key, setup.CAMaterial{
			Cert: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
			Key:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}),
		}
	}
	d := brokerv1.DefaultClustersetDomain
	now := time.Now()
	rootCert, rootKey, root := mk(&x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{Organization: []string{"Isthmus"}, CommonName: "Isthmus clusterset root CA " + d},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true, MaxPathLen: 1,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, PermittedURIDomains: []string{d}, PermittedDNSDomainsCritical: true,
	}, nil, nil)
	root.Bundle = root.Cert
	_, _, alpha = mk(&x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{Organization: []string{"Isthmus"}, CommonName: "Isthmus intermediate CA alpha." + d},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(12 * time.Hour), IsCA: true, BasicConstraintsValid: true, MaxPathLen: 0, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, PermittedURIDomains: []string{"alpha." + d}, PermittedDNSDomainsCritical: true,
	}, rootCert, rootKey)
	alpha.Bundle = root.Cert
	return root, alpha
}

// TestLegacyRootRotation: join's certificate steps on a clusterset whose
// root has the host-only constraint: the member's intermediate is due for
// re-issue, re-issuing under the old root fails saying to rotate it, and
// after the root is rotated (old and new roots both published) the new
// intermediate is good.
func TestLegacyRootRotation(t *testing.T) {
	p := newPKI(24*time.Hour, 12*time.Hour)
	d := brokerv1.DefaultClustersetDomain
	oldRoot, oldAlpha := legacyMaterial(t)
	if why := p.RenewalReason(oldAlpha, oldRoot.Bundle, d, "alpha"); !strings.Contains(why, "RFC 5280") {
		t.Errorf("RenewalReason of an intermediate under a legacy root: %q, want it due for RFC 5280", why)
	}
	if _, err := p.IssueIntermediate(oldRoot, d, "alpha"); err == nil || !strings.Contains(err.Error(), "rotate the clusterset root") {
		t.Errorf("issuing under a legacy root: %v, want an error saying to rotate it", err)
	}
	// What broker install does once the old root Secret is gone: a new
	// root, published next to the old one.
	newRoot, err := p.NewRoot(d)
	if err != nil {
		t.Fatal(err)
	}
	bundle := append(append([]byte{}, oldRoot.Bundle...), newRoot.Bundle...)
	alpha, err := p.IssueIntermediate(newRoot, d, "alpha")
	if err != nil {
		t.Fatal(err)
	}
	alpha.Bundle = bundle // join hands members the published bundle
	if why := p.RenewalReason(alpha, bundle, d, "alpha"); why != "" {
		t.Errorf("RenewalReason of an intermediate under the new root: %q, want none", why)
	}
	// The old intermediate is still due while both roots are published.
	if why := p.RenewalReason(oldAlpha, bundle, d, "alpha"); !strings.Contains(why, "RFC 5280") {
		t.Errorf("RenewalReason of the old intermediate with both roots published: %q", why)
	}
}
