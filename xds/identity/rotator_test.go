package identity

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fakeClock moves only when told; After fires once Advance passes its
// deadline (at once if the deadline is already past).
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []waiter
}

type waiter struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock(t time.Time) *fakeClock { return &fakeClock{now: t} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.waiters = append(c.waiters, waiter{c.now.Add(d), ch})
	return ch
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if w.at.After(c.now) {
			kept = append(kept, w)
			continue
		}
		w.ch <- c.now
	}
	c.waiters = kept
}

// running runs r until the returned function stops it and waits.
func running(r *Rotator) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	return func() { cancel(); <-done }
}

// fakeRotator is a Rotator of alpha's gateway on a fake clock with one-hour
// leaves.
func fakeRotator(t *testing.T, jitter float64) (clusterset, *fakeClock, *Rotator) {
	t.Helper()
	cs := newClusterset(t)
	clock := newFakeClock(time.Now())
	r, err := NewRotator(cs.a.WithClock(clock), gatewayA, RotatorOptions{TTL: time.Hour, Clock: clock, Jitter: jitter})
	if err != nil {
		t.Fatal(err)
	}
	return cs, clock, r
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	// A bound for a loaded machine (the race detector, two cores shared
	// with other test binaries), not a timing assertion.
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// quiet asserts that nothing arrives on ch for a moment of wall time.
func quiet(t *testing.T, ch <-chan *Leaf, what string) {
	t.Helper()
	select {
	case l := <-ch:
		t.Fatalf("%s: renewed too early (%s)", what, l)
	case <-time.After(150 * time.Millisecond):
	}
}

func next(t *testing.T, ch <-chan *Leaf, what string) *Leaf {
	t.Helper()
	select {
	case l := <-ch:
		return l
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: no renewal", what)
		return nil
	}
}

// TestRotatorRenewsBeforeExpiry runs a Rotator on a fake clock with one-hour
// leaves: nothing before half-life, a renewal between 50 % and 60 % of the
// life (jitter 10 %) and so before expiry, twice; subscribers get each new
// leaf and Current serves it.
func TestRotatorRenewsBeforeExpiry(t *testing.T) {
	_, clock, r := fakeRotator(t, 0)
	got := make(chan *Leaf, 10)
	r.Subscribe(func(l *Leaf) { got <- l })
	defer running(r)()

	prev := r.Current()
	for round := 1; round <= 2; round++ {
		issued := clock.Now()
		if at := r.RenewAt().Sub(issued); at < 30*time.Minute || at > 36*time.Minute+time.Second {
			t.Fatalf("round %d: renewal scheduled %v after issue, want 30–36 min", round, at)
		}
		clock.Advance(29 * time.Minute)
		quiet(t, got, "at 48 % of the life")
		clock.Advance(8 * time.Minute) // 61 %
		l := next(t, got, "at 61 % of the life")
		if now := clock.Now(); !now.Before(prev.NotAfter) {
			t.Fatalf("round %d: renewed at %s, after the old leaf expired at %s", round, now, prev.NotAfter)
		}
		if l.Serial() == prev.Serial() || !l.NotAfter.After(prev.NotAfter) || r.Current() != l {
			t.Fatalf("round %d: new leaf %s, old %s, current %s", round, l, prev, r.Current())
		}
		prev = l
	}
}

// TestRotatorRenewNowAndUnsubscribe: Renew issues at once and reschedules;
// an unsubscribed function hears nothing more.
func TestRotatorRenewNowAndUnsubscribe(t *testing.T) {
	_, clock, r := fakeRotator(t, -1)
	a, b := make(chan *Leaf, 10), make(chan *Leaf, 10)
	r.Subscribe(func(l *Leaf) { a <- l })
	unsubscribe := r.Subscribe(func(l *Leaf) { b <- l })
	clock.Advance(10 * time.Minute)
	if err := r.Renew(); err != nil {
		t.Fatal(err)
	}
	if la, lb := next(t, a, "subscriber a"), next(t, b, "subscriber b"); la != lb || la != r.Current() {
		t.Fatal("subscribers got different leaves")
	}
	// X.509 times have whole seconds, so the life is measured on the
	// certificate, not taken from the TTL.
	if want := clock.Now().Add(r.Current().NotAfter.Sub(clock.Now()) / 2); !r.RenewAt().Equal(want) {
		t.Errorf("after Renew, renewal at %s, want %s (half of the new leaf's life, no jitter)", r.RenewAt(), want)
	}
	unsubscribe()
	if err := r.Renew(); err != nil {
		t.Fatal(err)
	}
	next(t, a, "subscriber a")
	quiet(t, b, "unsubscribed b")
}

// TestRotatorRetriesFailedRenewal: a failed renewal keeps the current leaf
// and is retried after a second, then succeeds.
func TestRotatorRetriesFailedRenewal(t *testing.T) {
	cs := newClusterset(t)
	clock := newFakeClock(time.Now())
	iss := &failingIssuer{ca: cs.a.WithClock(clock)}
	reg := prometheus.NewPedanticRegistry()
	met := NewMetrics(reg)
	r, err := NewRotator(iss, gatewayA, RotatorOptions{TTL: time.Hour, Clock: clock, Metrics: met})
	if err != nil {
		t.Fatal(err)
	}
	first := r.Current()
	got := make(chan *Leaf, 10)
	r.Subscribe(func(l *Leaf) { got <- l })
	defer running(r)()

	iss.mu.Lock()
	iss.fail = true
	iss.mu.Unlock()
	clock.Advance(40 * time.Minute)
	waitFor(t, "a retry scheduled", func() bool { return r.RenewAt().Equal(clock.Now().Add(time.Second)) })
	if r.Current() != first {
		t.Fatal("a failed renewal replaced the current leaf")
	}
	iss.mu.Lock()
	iss.fail = false
	iss.mu.Unlock()
	clock.Advance(time.Second)
	l := next(t, got, "retry")
	if l == first {
		t.Fatal("retry returned the old leaf")
	}
	ok, failed := testutil.ToFloat64(met.renewals.WithLabelValues(gatewayA, "ok")), testutil.ToFloat64(met.renewals.WithLabelValues(gatewayA, "error"))
	if ok != 2 || failed != 1 {
		t.Errorf("renewals ok %v, error %v; want 2 (first issue and retry) and 1", ok, failed)
	}
	if exp := testutil.ToFloat64(met.expiry.WithLabelValues(gatewayA)); exp != float64(l.NotAfter.Unix()) {
		t.Errorf("expiry gauge %v, want %d", exp, l.NotAfter.Unix())
	}
	if n, err := testutil.GatherAndCount(reg); err != nil || n != 3 {
		t.Errorf("gathered %d series, %v", n, err)
	}
}

// TestRotatorJitter checks that renewals spread over [50 %, 60 %) of the
// life rather than all at one instant.
func TestRotatorJitter(t *testing.T) {
	cs, clock, r := fakeRotator(t, 0)
	seen := map[time.Duration]bool{}
	for range 20 {
		if err := r.Renew(); err != nil {
			t.Fatal(err)
		}
		life := r.Current().NotAfter.Sub(clock.Now())
		at := r.RenewAt().Sub(clock.Now())
		if at < life/2 || at >= life*6/10 {
			t.Fatalf("renewal at %v of a %v life, want within [50 %%, 60 %%)", at, life)
		}
		seen[at] = true
	}
	if len(seen) < 10 {
		t.Errorf("20 renewals fell on only %d instants", len(seen))
	}
	if _, err := NewRotator(cs.a, gatewayA, RotatorOptions{Jitter: 0.5}); err == nil {
		t.Error("a jitter of 50 % was accepted")
	}
	if _, err := NewRotator(cs.a, gatewayB, RotatorOptions{}); err == nil {
		t.Error("a rotator for another cluster's id started")
	}
}
