package identity

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Issuer issues leaves; *CA is one. A caller whose intermediate can change
// (renewed by `isthmusctl join`) passes one that reads the current CA.
type Issuer interface {
	IssueLeaf(spiffeID string, ttl time.Duration) (*Leaf, error)
}

// RotatorOptions tune a Rotator; the zero value is Istio's defaults.
type RotatorOptions struct {
	// TTL is each leaf's lifetime; zero means 24 hours.
	TTL time.Duration
	// Jitter is the largest fraction of a leaf's life added to its
	// half-life before renewal, so that many leaves issued together do not
	// renew together; zero means 0.1, negative means none.
	Jitter float64
	// Clock defaults to the system clock. The issuer should read the same
	// clock.
	Clock Clock
	// Logger defaults to discarding.
	Logger *slog.Logger
	// Metrics, if set, counts renewals and shows the current expiry.
	Metrics *Metrics
}

// Rotator keeps a current leaf for one SPIFFE id, renews it once half its
// life (plus jitter) has passed, and tells subscribers. It is an
// x509svid.Source, so a tls.Config built on it presents the current leaf
// in every new handshake.
type Rotator struct {
	issuer Issuer
	id     string
	ttl    time.Duration
	jitter float64
	clock  Clock
	log    *slog.Logger
	met    *Metrics
	kick   chan struct{}

	// renewing serialises renewals, so subscribers see leaves in the
	// order they were issued.
	renewing sync.Mutex
	mu       sync.Mutex
	current  *Leaf
	renewAt  time.Time
	subs     map[int]func(*Leaf)
	nextSub  int
	failures int
}

// NewRotator issues the first leaf for spiffeID at once, so a caller has
// a certificate before it serves, and returns the Rotator; Run keeps it
// fresh.
func NewRotator(issuer Issuer, spiffeID string, opts RotatorOptions) (*Rotator, error) {
	r := &Rotator{issuer: issuer, id: spiffeID, ttl: opts.TTL, jitter: opts.Jitter, clock: opts.Clock, log: opts.Logger, met: opts.Metrics,
		kick: make(chan struct{}, 1), subs: map[int]func(*Leaf){}}
	if r.ttl == 0 {
		r.ttl = 24 * time.Hour
	}
	switch {
	case r.jitter == 0:
		r.jitter = 0.1
	case r.jitter < 0:
		r.jitter = 0
	case r.jitter > 0.4:
		return nil, fmt.Errorf("rotation jitter %v would renew too close to expiry; keep it at most 0.4", opts.Jitter)
	}
	if r.clock == nil {
		r.clock = systemClock{}
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if err := r.Renew(); err != nil {
		return nil, err
	}
	return r, nil
}

// Current is the leaf to serve now.
func (r *Rotator) Current() *Leaf {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.current
}

// RenewAt is when the current leaf will be renewed.
func (r *Rotator) RenewAt() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.renewAt
}

// GetX509SVID returns the current leaf as an SVID for go-spiffe.
func (r *Rotator) GetX509SVID() (*x509svid.SVID, error) {
	return r.Current().GetX509SVID()
}

// Subscribe calls fn with every new leaf, from the goroutine that renewed
// it; fn should hand the leaf on rather than block. The returned function
// unsubscribes.
func (r *Rotator) Subscribe(fn func(*Leaf)) (unsubscribe func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.nextSub
	r.nextSub++
	r.subs[n] = fn
	return func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		delete(r.subs, n)
	}
}

// Renew issues a new leaf now (for instance after the intermediate
// changed), tells the subscribers, and reschedules the next renewal.
func (r *Rotator) Renew() error {
	r.renewing.Lock()
	defer r.renewing.Unlock()
	leaf, err := r.issuer.IssueLeaf(r.id, r.ttl)
	if err != nil {
		r.met.failed(r.id)
		return fmt.Errorf("renewing the certificate of %s: %w", r.id, err)
	}
	r.met.renewed(leaf)
	issued := r.clock.Now()
	life := leaf.NotAfter.Sub(issued)
	wait := life/2 + time.Duration(rand.Float64()*r.jitter*float64(life))
	r.mu.Lock()
	r.current, r.renewAt, r.failures = leaf, issued.Add(wait), 0
	subs := make([]func(*Leaf), 0, len(r.subs))
	for _, fn := range r.subs {
		subs = append(subs, fn)
	}
	renewAt := r.renewAt
	r.mu.Unlock()
	r.log.Info("issued certificate", "leaf", leaf, "renew_at", renewAt)
	for _, fn := range subs {
		fn(leaf)
	}
	select {
	case r.kick <- struct{}{}:
	default:
	}
	return nil
}

// Run renews the leaf whenever it is due until ctx ends. A failed renewal
// is logged and retried with backoff (1 s doubling to 1 min) while the
// current leaf serves on.
func (r *Rotator) Run(ctx context.Context) error {
	for {
		r.mu.Lock()
		wait := r.renewAt.Sub(r.clock.Now())
		r.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil
		case <-r.kick:
			continue
		case <-r.clock.After(wait):
		}
		if err := r.Renew(); err != nil {
			r.retryLater(err)
		}
	}
}

// retryLater schedules the next attempt after a failed renewal.
func (r *Rotator) retryLater(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	backoff := time.Second << min(r.failures, 6)
	backoff = min(backoff, time.Minute)
	r.failures++
	r.renewAt = r.clock.Now().Add(backoff)
	level := slog.LevelWarn
	if !r.clock.Now().Before(r.current.NotAfter) {
		level = slog.LevelError
		err = errors.Join(err, fmt.Errorf("the current certificate expired at %s", r.current.NotAfter.UTC().Format(time.RFC3339)))
	}
	r.log.Log(context.Background(), level, "certificate renewal failed; retrying", "id", r.id, "retry_in", backoff, "attempt", r.failures, "err", err)
}
