package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-dev/isthmus/test/install"
)

// TestVerify runs `isthmusctl verify` as a person would, against the
// README's install on two members with real nodes (the chart's image,
// whose hidden `isthmus probe` the pods run): across clusters; with
// failover from the client's own exporter to the other cluster's; with an
// image no node has (exit 1, the step saying why); and interrupted with
// Ctrl-C. Every run leaves no namespace behind.
func TestVerify(t *testing.T) {
	s := install.Start(t, install.Options{Members: 2})
	m1, m2 := s.Members[0], s.Members[1]
	id1, id2 := s.ClusterID(m1), s.ClusterID(m2)
	base := []string{"verify", "--kubeconfig", s.Kubeconfig, "-o", "json"}

	verify := func(t *testing.T, args ...string) ([]verifyStep, result) {
		t.Helper()
		r := runCtl(t, s.Artifacts.Isthmusctl, nil, append(base, args...)...)
		var steps []verifyStep
		if err := json.Unmarshal([]byte(r.stdout), &steps); err != nil {
			t.Fatalf("output is not the JSON report: %v\n%s", err, r)
		}
		for _, st := range steps {
			t.Logf("%-32s ok=%-5v %8v  %s", st.Step, st.OK, st.Took.Round(time.Millisecond), st.Detail)
		}
		return steps, r
	}
	find := func(t *testing.T, steps []verifyStep, name string) verifyStep {
		t.Helper()
		for _, st := range steps {
			if st.Step == name {
				return st
			}
		}
		t.Fatalf("no step %q in %+v", name, steps)
		return verifyStep{}
	}

	t.Run("across clusters", func(t *testing.T) {
		steps, r := verify(t, "--servers", "member1", "--client", "member2", "-n", "verify-across")
		if r.code != 0 {
			t.Fatalf("exit %d, want 0:\n%s", r.code, r)
		}
		if st := find(t, steps, "resolve in pod"); !strings.Contains(st.Detail, "verify.verify-across.svc.clusterset.local → ") {
			t.Errorf("resolve: %+v", st)
		}
		if st := find(t, steps, "connect through the ClusterSetIP"); !strings.HasPrefix(st.Detail, "answered by "+id1) {
			t.Errorf("connect: %+v, want answered by %s", st, id1)
		}
		if st := find(t, steps, "cleanup"); !st.OK {
			t.Errorf("cleanup: %+v", st)
		}
		gone(t, s, "verify-across")
	})

	t.Run("failover", func(t *testing.T) {
		steps, r := verify(t, "--servers", "member2,member1", "--client", "member2", "--failover", "-n", "verify-failover")
		if r.code != 0 {
			t.Fatalf("exit %d, want 0:\n%s", r.code, r)
		}
		// Imported means each server's endpoints are there, not only the
		// ServiceImport naming its cluster.
		if st := find(t, steps, "imported in "+id2); !strings.Contains(st.Detail, "ready endpoints from "+id2+" 1, "+id1+" 1") {
			t.Errorf("imported: %+v, want one ready endpoint from each server", st)
		}
		// The client's own cluster answers while it can, then the other.
		if st := find(t, steps, "connect through the ClusterSetIP"); !strings.HasPrefix(st.Detail, "answered by "+id2) {
			t.Errorf("connect: %+v, want answered by %s, the client's own", st, id2)
		}
		find(t, steps, "drain "+id2)
		if st := find(t, steps, "failover to "+id1); !st.OK {
			t.Errorf("failover: %+v", st)
		}
		gone(t, s, "verify-failover")
	})

	t.Run("an image no node has", func(t *testing.T) {
		steps, r := verify(t, "--servers", "member1", "--client", "member2", "-n", "verify-noimage", "--timeout", "15s",
			"--image", "ghcr.io/isthmus-dev/isthmus:no-such-version")
		if r.code != exitChecksFailed {
			t.Errorf("exit %d, want %d:\n%s", r.code, exitChecksFailed, r)
		}
		if st := find(t, steps, "server ready in "+id1); st.OK || !strings.Contains(st.Detail, "no-such-version") {
			t.Errorf("server ready: %+v, want a failure naming the image", st)
		}
		gone(t, s, "verify-noimage")
	})

	t.Run("Ctrl-C cleans up", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		interrupt := func(cmd *exec.Cmd) {
			// Once the server pod exists, mid-run, interrupt as a
			// terminal's Ctrl-C does.
			for ctx.Err() == nil {
				if _, err := m1.Client.CoreV1().Pods("verify-interrupted").Get(ctx, verifyServerPod, metav1.GetOptions{}); err == nil {
					_ = cmd.Process.Signal(os.Interrupt)
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
		r := runCtl(t, s.Artifacts.Isthmusctl, interrupt, append(base, "--servers", "member1", "--client", "member2", "-n", "verify-interrupted")...)
		if r.code != exitChecksFailed || !strings.Contains(r.stdout, `"step": "cleanup"`) {
			t.Errorf("exit %d, want %d with a cleanup step:\n%s", r.code, exitChecksFailed, r)
		}
		gone(t, s, "verify-interrupted")
	})
}

// runCtl runs isthmusctl with args; during, if set, runs beside it.
func runCtl(t *testing.T, bin string, during func(*exec.Cmd), args ...string) result {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if during != nil {
		go during(cmd)
	}
	err := cmd.Wait()
	code := 0
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		code = exit.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	t.Logf("$ isthmusctl %s\n(exit %d)\n%s", strings.Join(args, " "), code, stderr.String())
	return result{stdout.String(), stderr.String(), code}
}

// gone checks that verify left namespace ns nowhere (deleted, or being
// deleted).
func gone(t *testing.T, s *install.Set, ns string) {
	t.Helper()
	for _, m := range s.Members {
		got, err := m.Client.CoreV1().Namespaces().Get(context.Background(), ns, metav1.GetOptions{})
		if err == nil && got.DeletionTimestamp == nil {
			t.Errorf("%s: namespace %s left behind", m.Name, ns)
		} else if err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("%s: %v", m.Name, err)
		}
	}
}
