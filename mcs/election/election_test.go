package election

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// fast are timings short enough for a test and long enough for -race.
func fast(c kubernetes.Interface, identity string) Config {
	return Config{Client: c, Namespace: "isthmus-system", Name: "isthmus-test", Identity: identity,
		LeaseDuration: time.Second, RenewDeadline: 500 * time.Millisecond, RetryPeriod: 50 * time.Millisecond, Log: slog.New(slog.DiscardHandler)}
}

func holder(t *testing.T, c kubernetes.Interface) string {
	t.Helper()
	l, err := c.CoordinationV1().Leases("isthmus-system").Get(context.Background(), "isthmus-test", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

// TestOneAtATimeAndHandOver: of two replicas only the holder works; when
// it stops cleanly it releases the Lease and the standby takes over long
// before the Lease would have expired.
func TestOneAtATimeAndHandOver(t *testing.T) {
	c := fake.NewClientset()
	leading := make(chan string, 2)
	replica := func(ctx context.Context, id string) chan error {
		out := make(chan error, 1)
		cfg := fast(c, id)
		cfg.LeaseDuration = time.Minute // a takeover within the test proves the release
		cfg.RenewDeadline = 2 * time.Second
		go func() {
			out <- Run(ctx, cfg, func(ctx context.Context) error { leading <- id; <-ctx.Done(); return ctx.Err() })
		}()
		return out
	}
	ctxA, stopA := context.WithCancel(context.Background())
	defer stopA()
	doneA := replica(ctxA, "a")
	if got := <-leading; got != "a" {
		t.Fatalf("%s leads, want a", got)
	}
	ctxB, stopB := context.WithCancel(context.Background())
	defer stopB()
	doneB := replica(ctxB, "b")
	select {
	case id := <-leading:
		t.Fatalf("%s leads while a holds the Lease", id)
	case <-time.After(300 * time.Millisecond):
	}
	stopA()
	if err := <-doneA; err != nil {
		t.Errorf("a after a clean stop: %v, want nil", err)
	}
	select {
	case id := <-leading:
		if id != "b" {
			t.Fatalf("%s leads, want b", id)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("b did not take over the released Lease")
	}
	if h := holder(t, c); h != "b" {
		t.Errorf("the Lease is held by %q, want b", h)
	}
	stopB()
	if err := <-doneB; err != nil {
		t.Errorf("b after a clean stop: %v, want nil", err)
	}
	if h := holder(t, c); h != "" {
		t.Errorf("the Lease after a clean stop is held by %q, want released", h)
	}
}

// TestWorkErrorIsReturned: work failing ends Run with its error, and
// work ending cleanly on its own ends it without one.
func TestWorkErrorIsReturned(t *testing.T) {
	c := fake.NewClientset()
	boom := errors.New("device gone")
	if err := Run(context.Background(), fast(c, "a"), func(context.Context) error { return boom }); !errors.Is(err, boom) {
		t.Errorf("Run = %v, want %v", err, boom)
	}
	if err := Run(context.Background(), fast(c, "a"), func(context.Context) error { return nil }); err != nil {
		t.Errorf("Run = %v, want nil", err)
	}
}

// TestLosingTheLeaseStopsWork: when the leader cannot renew its Lease
// for the renew deadline (a partition from the apiserver), its work stops
// and Run says so, so that the process restarts as a standby.
func TestLosingTheLeaseStopsWork(t *testing.T) {
	c := fake.NewClientset()
	var partitioned atomic.Bool
	c.PrependReactor("update", "leases", func(k8stesting.Action) (bool, runtime.Object, error) {
		if partitioned.Load() {
			return true, nil, errors.New("connection refused")
		}
		return false, nil, nil
	})
	working := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- Run(context.Background(), fast(c, "a"), func(ctx context.Context) error { close(working); <-ctx.Done(); return nil })
	}()
	<-working
	partitioned.Store(true)
	select {
	case err := <-done:
		if !errors.Is(err, ErrLost) {
			t.Errorf("Run after losing the Lease = %v, want ErrLost", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("work still runs 10s after the renewals began to fail")
	}
}

func TestIdentityRequired(t *testing.T) {
	if err := Run(context.Background(), fast(fake.NewClientset(), ""), func(context.Context) error { return nil }); err == nil {
		t.Error("Run without an identity: accepted")
	}
}

// TestReleasedOnlyAfterWorkReturned: a stand-by takes over only once the
// leader's work has finished tearing down, not when its context ended
// (the tunnel's device and UDP port are still held until then).
func TestReleasedOnlyAfterWorkReturned(t *testing.T) {
	c := fake.NewClientset()
	var mu sync.Mutex
	var finished, tookOver time.Time
	leading := make(chan string, 2)
	ctxA, stopA := context.WithCancel(context.Background())
	cfgA := fast(c, "a")
	cfgA.LeaseDuration = time.Minute
	doneA := make(chan error, 1)
	go func() {
		doneA <- Run(ctxA, cfgA, func(ctx context.Context) error {
			leading <- "a"
			<-ctx.Done()
			time.Sleep(500 * time.Millisecond) // tearing down
			mu.Lock()
			finished = time.Now()
			mu.Unlock()
			return nil
		})
	}()
	if got := <-leading; got != "a" {
		t.Fatalf("%s leads, want a", got)
	}
	ctxB, stopB := context.WithCancel(context.Background())
	defer stopB()
	go func() {
		_ = Run(ctxB, fast(c, "b"), func(ctx context.Context) error {
			mu.Lock()
			tookOver = time.Now()
			mu.Unlock()
			leading <- "b"
			<-ctx.Done()
			return nil
		})
	}()
	stopA()
	if err := <-doneA; err != nil {
		t.Fatalf("a: %v", err)
	}
	select {
	case <-leading:
	case <-time.After(10 * time.Second):
		t.Fatal("b did not take over the released Lease")
	}
	mu.Lock()
	defer mu.Unlock()
	if tookOver.Before(finished) {
		t.Errorf("b took over %v before a's work returned", finished.Sub(tookOver))
	}
}

// TestReleasedDespiteALateRenewal: a renewal the elector sent as ctx ended
// is canceled on the client yet may land on the server after the release
// read the Lease, so the release's update conflicts. It must read again and
// release, not leave the Lease held until it expires.
func TestReleasedDespiteALateRenewal(t *testing.T) {
	c := fake.NewClientset()
	var conflicted atomic.Bool
	c.PrependReactor("update", "leases", func(a k8stesting.Action) (bool, runtime.Object, error) {
		l := a.(k8stesting.UpdateAction).GetObject().(*coordinationv1.Lease)
		if (l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity == "") && !conflicted.Swap(true) {
			return true, nil, apierrors.NewConflict(coordinationv1.Resource("leases"), l.Name, errors.New("the object has been modified"))
		}
		return false, nil, nil
	})
	if err := Run(context.Background(), fast(c, "a"), func(context.Context) error { return nil }); err != nil {
		t.Fatalf("Run = %v", err)
	}
	if !conflicted.Load() {
		t.Fatal("the release never updated the Lease")
	}
	if h := holder(t, c); h != "" {
		t.Errorf("the Lease after a clean stop is held by %q, want released", h)
	}
}
