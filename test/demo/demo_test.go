package demo

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"testing"
	"time"
)

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// TestMain lets the demo run this test binary again as its gRPC client
// (see ClientMain).
func TestMain(m *testing.M) {
	ClientMain()
	os.Exit(m.Run())
}

// TestDemo runs the demo's scenario and checks what it narrates: c
// resolves and reaches a over WireGuard; c's proxyless gRPC client is
// served by a in mTLS with the identities our xDS servers issued; a's
// clients and c's gRPC client fail over to b when a's pods go and come
// back when they return; a cut off is marked unhealthy and withdrawn and c
// is then served by b; nothing is left behind.
func TestDemo(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the demo test needs root (network namespaces, TUN devices), as CI has")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out := testWriter{t}
	// ISTHMUS_BIN_DIR: binaries built already (make build), else Up builds them.
	w, err := Up(ctx, Options{Out: out, BinDir: os.Getenv("ISTHMUS_BIN_DIR"), Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatalf("demo up: %v", err)
	}
	res, err := w.Run(ctx)
	var sum bytes.Buffer
	if res != nil {
		res.Summary(&sum)
		t.Logf("summary:\n%s", sum.String())
	}
	if err != nil {
		for _, m := range w.Members {
			if b, rerr := os.ReadFile(m.IsthmusLog()); rerr == nil {
				t.Logf("--- isthmus log of %s (last 4 KiB) ---\n%s", m.ID, tail(b, 4096))
			}
			if b, rerr := os.ReadFile(m.GRPCClientLog()); rerr == nil && len(b) > 0 {
				t.Logf("--- gRPC client log of %s (last 4 KiB) ---\n%s", m.ID, tail(b, 4096))
			}
		}
		w.Down()
		t.Fatalf("scenario: %v", err)
	}
	for _, name := range []string{StepReady, StepResolve, StepReach, StepDiagnose, StepXDS, StepLocalDown, StepXDSDown, StepLocalBack, StepXDSBack, StepClusterCut, StepUnhealthy, StepWithdrawn} {
		if _, ok := res.Step(name); !ok {
			t.Errorf("step %q not reported", name)
		}
	}
	if s, _ := res.Step(StepReach); s.ServedBy != "a" {
		t.Errorf("c was served by %q, want a", s.ServedBy)
	}
	if s, _ := res.Step(StepXDS); s.ServedBy != "a" || s.ServerID != SPIFFEID("a", echoSA) || s.ClientID != SPIFFEID("c", clientSA) {
		t.Errorf("c's gRPC client: %+v, want served by a, which presented %s and saw %s", s, SPIFFEID("a", echoSA), SPIFFEID("c", clientSA))
	}
	if s, _ := res.Step(StepXDSDown); s.ServedBy != "b" || s.Total == 0 {
		t.Errorf("a's pods down, c's gRPC client: %+v, want b serving after some RPCs", s)
	}
	if s, _ := res.Step(StepXDSBack); s.ServedBy != "a" {
		t.Errorf("a's pods back, c's gRPC client: %+v, want a serving", s)
	}
	if s, _ := res.Step(StepLocalDown); s.ServedBy != "b" || s.Total == 0 {
		t.Errorf("a's pods down: %+v, want b serving after some requests", s)
	}
	if s, _ := res.Step(StepClusterCut); s.ServedBy != "b" {
		t.Errorf("a cut off: %+v, want b serving c", s)
	}
	if un, _ := res.Step(StepUnhealthy); un.Took < LeaseDuration/2 {
		t.Errorf("a marked unhealthy %s after the cut, before its %s lease could lapse", un.Took, LeaseDuration)
	}
	w.Down()
	if left := Leftovers(); len(left) > 0 {
		t.Errorf("left behind after Down: %v", left)
	}
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
