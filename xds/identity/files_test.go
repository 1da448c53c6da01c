package identity

import (
	"bytes"
	"crypto/tls"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestWriteFiles writes a leaf for gRPC's file_watcher provider, checks
// modes and contents, and rewrites it while readers read: every read sees
// a whole file, old or new, never a torn one, and no temporary file stays.
func TestWriteFiles(t *testing.T) {
	cs := newClusterset(t)
	dir := t.TempDir()
	first := issue(t, cs.a, gatewayA)
	if err := first.WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	for name, mode := range map[string]os.FileMode{CertFile: 0o644, KeyFile: 0o600, CAFile: 0o644} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s has mode %v, want %v", name, fi.Mode().Perm(), mode)
		}
	}
	// What gRPC's pemfile provider does with the files: a key pair.
	if _, err := tls.LoadX509KeyPair(filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile)); err != nil {
		t.Fatalf("the written files are not a key pair: %v", err)
	}
	if _, err := NewTrustBundle(domain, mustRead(t, filepath.Join(dir, CAFile))); err != nil {
		t.Fatalf("the written bundle: %v", err)
	}

	leaves := []*Leaf{first, issue(t, cs.a, gatewayA)}
	var stop atomic.Bool
	var wg sync.WaitGroup
	var reads, torn atomic.Int64
	for range 2 {
		wg.Go(func() {
			for !stop.Load() {
				got, err := os.ReadFile(filepath.Join(dir, CertFile))
				if err != nil {
					t.Errorf("reading during rewrites: %v", err)
					return
				}
				reads.Add(1)
				if !bytes.Equal(got, leaves[0].CertChainPEM) && !bytes.Equal(got, leaves[1].CertChainPEM) {
					torn.Add(1)
				}
			}
		})
	}
	deadline := time.Now().Add(300 * time.Millisecond)
	writes := 0
	// At least a few rewrites even when fsync is slow on a loaded machine.
	for writes < 4 || time.Now().Before(deadline) {
		if err := leaves[writes%2].WriteFiles(dir); err != nil {
			t.Fatal(err)
		}
		writes++
	}
	stop.Store(true)
	wg.Wait()
	if torn.Load() > 0 {
		t.Errorf("%d of %d reads saw a partial file", torn.Load(), reads.Load())
	}
	if reads.Load() == 0 {
		t.Fatalf("the race did not run: %d reads, %d writes", reads.Load(), writes)
	}
	t.Logf("%d rewrites, %d reads, none torn", writes, reads.Load())
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 3 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("directory holds %v, want only the three files", names)
	}
	if err := first.WriteFiles(filepath.Join(dir, "missing")); err == nil {
		t.Error("writing into a missing directory succeeded")
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
