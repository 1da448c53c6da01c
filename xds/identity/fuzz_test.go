package identity

import (
	"strings"
	"testing"
	"time"
)

// FuzzLoadCA feeds LoadCA arbitrary certificate, key and bundle PEM. It
// must never panic, must accept only a CA whose key matches and which
// chains to the bundle, and its errors must never quote the key.
func FuzzLoadCA(f *testing.F) {
	root, err := NewRoot(domain, time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	a, err := root.IssueIntermediate("alpha", time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	rc, rk, rb := pemOf(f, root)
	ac, ak, ab := pemOf(f, a)
	f.Add(ac, ak, ab)
	f.Add(rc, rk, rb)
	f.Add(ac, rk, ab)
	f.Add(rk, ak, ac)
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), ak, ab)
	f.Add(ac[:len(ac)/2], ak, ab)
	f.Add([]byte{}, []byte{}, []byte{})
	f.Fuzz(func(t *testing.T, cert, key, bundle []byte) {
		ca, err := LoadCA(cert, key, bundle)
		if err != nil {
			if msg := err.Error(); strings.Contains(msg, "PRIVATE KEY-----") || (len(key) > 40 && strings.Contains(msg, string(key[len(key)/2:len(key)/2+20]))) {
				t.Fatalf("error quotes the key: %v", err)
			}
			return
		}
		// Whatever loads must be usable: round-trip it and issue with it.
		c, k, b, err := ca.PEM()
		if err != nil {
			t.Fatalf("PEM of a loaded CA: %v", err)
		}
		if _, err := LoadCA(c, k, b); err != nil {
			t.Fatalf("a loaded CA does not load again: %v", err)
		}
		if ca.IsIntermediate() {
			if _, err := ca.IssueLeaf("spiffe://"+ca.Domain()+"/ns/a/sa/b", time.Minute); err != nil {
				t.Fatalf("a loaded intermediate cannot issue: %v", err)
			}
		}
	})
}
