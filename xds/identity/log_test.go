package identity

import (
	"bytes"
	"crypto/ecdsa"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"
)

// keyForms are the ways a private key could show up in text: its PEM
// header, chunks of its base64 body, its DER in hex and base64 (what
// encoding/json does to []byte), and the ECDSA scalar in decimal and hex.
func keyForms(t *testing.T, keyPEM []byte) []string {
	t.Helper()
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		t.Fatal("no key PEM")
	}
	forms := []string{"PRIVATE KEY-----", hex.EncodeToString(block.Bytes)[:32]}
	b64 := base64.StdEncoding.EncodeToString(block.Bytes)
	for i := 0; i+24 <= len(b64); i += 24 {
		forms = append(forms, b64[i:i+24])
	}
	pemB64 := base64.StdEncoding.EncodeToString(keyPEM)
	forms = append(forms, pemB64[:32])
	key, err := parseKey(keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if ek, ok := key.(*ecdsa.PrivateKey); ok {
		b, err := ek.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		forms = append(forms, hex.EncodeToString(b)[:24], fmt.Sprintf("%x", b)[:24], new(big.Int).SetBytes(b).String()[:24])
	}
	return forms
}

// assertNoKey fails if text contains any form of any of the keys.
func assertNoKey(t *testing.T, text string, keys ...[]byte) {
	t.Helper()
	for _, k := range keys {
		for _, f := range keyForms(t, k) {
			if strings.Contains(text, f) {
				t.Fatalf("key material %q found in:\n%s", f, text)
			}
		}
	}
}

// failingIssuer fails when told to.
type failingIssuer struct {
	ca   *CA
	mu   sync.Mutex
	fail bool
}

func (f *failingIssuer) IssueLeaf(id string, ttl time.Duration) (*Leaf, error) {
	f.mu.Lock()
	fail := f.fail
	f.mu.Unlock()
	if fail {
		// Wrap a CA's error, as a real failure would.
		_, err := f.ca.WithClock(fixedClock(f.ca.cert.NotAfter.Add(time.Hour))).IssueLeaf(id, ttl)
		return nil, errors.Join(errors.New("intermediate unavailable"), err)
	}
	return f.ca.IssueLeaf(id, ttl)
}

// TestKeysNeverLogged drives every path that logs or prints (issuing,
// renewal, failed renewal, printing a CA and a Leaf with fmt and slog in
// text and JSON) and greps all of it for the keys involved.
func TestKeysNeverLogged(t *testing.T) {
	cs := newClusterset(t)
	var logs syncBuffer
	var leafKeys [][]byte
	for _, h := range []slog.Handler{
		slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}),
		slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}),
	} {
		log := slog.New(h)
		clock := newFakeClock(time.Now())
		iss := &failingIssuer{ca: cs.a.WithClock(clock)}
		r, err := NewRotator(iss, gatewayA, RotatorOptions{TTL: time.Hour, Clock: clock, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		stop := running(r)
		if err := r.Renew(); err != nil {
			t.Fatal(err)
		}
		iss.mu.Lock()
		iss.fail = true
		iss.mu.Unlock()
		if err := r.Renew(); err == nil {
			t.Fatal("renewal with a failing issuer succeeded")
		} else {
			log.Error("renewal", "err", err)
		}
		clock.Advance(2 * time.Hour) // due, and failing: the retry path logs
		waitFor(t, "a failed renewal logged", func() bool { return strings.Contains(logs.String(), "certificate renewal failed") })
		stop()

		leaf := r.Current()
		leafKeys = append(leafKeys, leaf.KeyPEM)
		log.Info("objects", "leaf", leaf, "ca", cs.a, "root", cs.root, "leafptr", any(leaf))
		fmt.Fprintf(&logs, "%v %+v %#v %s\n", leaf, leaf, leaf, leaf)
		fmt.Fprintf(&logs, "%v %+v %#v %s\n", cs.a, cs.a, cs.a, cs.root)
		js, err := json.Marshal(map[string]any{"leaf": leaf, "leaves": []*Leaf{leaf}})
		if err != nil {
			t.Fatal(err)
		}
		logs.Write(js)
	}
	out := logs.String()
	if !strings.Contains(out, gatewayA) || !strings.Contains(out, "issued certificate") || !strings.Contains(out, "expired") {
		t.Fatalf("the logs lack what the test drove, so the grep below proves nothing:\n%s", out)
	}
	var keys [][]byte
	for _, ca := range []*CA{cs.root, cs.a} {
		_, k, _ := pemOf(t, ca)
		keys = append(keys, k)
	}
	assertNoKey(t, out, append(keys, leafKeys...)...)
	if strings.Contains(out, "PRIVATE KEY") || strings.Contains(out, "KeyPEM") {
		t.Errorf("the logs mention a key:\n%s", out)
	}
}

// syncBuffer is a bytes.Buffer that a logging goroutine and the test may
// share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
