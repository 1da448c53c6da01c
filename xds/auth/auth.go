// Package auth authenticates xDS clients by the Kubernetes ServiceAccount
// token they send on their stream: a projected token bound to an audience
// of its own (Audience), checked with the apiserver's TokenReview. The
// xDS server asks it who a stream's caller is; what each caller may see is
// the server's decision.
package auth

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Audience is the audience an xDS client's token must be bound to. A
// token for the apiserver (the default audience) is refused, and a token
// for this audience is useless against the apiserver, so a leaked xDS
// token opens nothing else.
const Audience = "isthmus-xds"

// Errors an Authenticate may wrap; the server counts refusals by them.
var (
	// ErrInvalid: the apiserver did not authenticate the token (expired,
	// another audience, another cluster's, revoked, malformed).
	ErrInvalid = errors.New("token not authenticated")
	// ErrNotServiceAccount: a valid token of a user that is no
	// ServiceAccount.
	ErrNotServiceAccount = errors.New("not a ServiceAccount")
	// ErrUnavailable: the review itself failed; the client may retry.
	// Errors wrapping it report Temporary() true.
	ErrUnavailable error = temporary{errors.New("token review failed")}
)

type temporary struct{ error }

func (temporary) Temporary() bool { return true }
func (t temporary) Unwrap() error { return t.error }

// How long a review's answer is reused: a reconnecting client does not
// cost the apiserver a review each time, and a revoked token (its pod
// deleted) is refused on new streams within a minute.
const (
	positiveTTL = time.Minute
	negativeTTL = 10 * time.Second
	maxCached   = 10000
	// maxInFlight bounds concurrent reviews, so a flood of streams with
	// made-up tokens queues here instead of at the apiserver.
	maxInFlight = 8
	// maxTokenBytes: Kubernetes tokens are about 1 KiB; anything much
	// larger is not one and is not sent to the apiserver.
	maxTokenBytes = 16 << 10
)

// Reviewer checks tokens with TokenReview.
type Reviewer struct {
	kube     kubernetes.Interface
	audience string
	now      func() time.Time
	slots    chan struct{}

	mu    sync.Mutex
	cache map[[sha256.Size]byte]cached
}

type cached struct {
	user    string
	err     error
	expires time.Time
}

// NewReviewer reviews tokens against kube's apiserver for audience (empty:
// Audience). The caller needs `create` on `tokenreviews`.
func NewReviewer(kube kubernetes.Interface, audience string) *Reviewer {
	if audience == "" {
		audience = Audience
	}
	return &Reviewer{kube: kube, audience: audience, now: time.Now, slots: make(chan struct{}, maxInFlight), cache: map[[sha256.Size]byte]cached{}}
}

// Audience is the audience tokens must be bound to.
func (r *Reviewer) Audience() string { return r.audience }

// Authenticate returns the ServiceAccount ("namespace/name") whose token
// this is, or why not. Errors name the reason in words an operator can
// act on and never quote the token.
func (r *Reviewer) Authenticate(ctx context.Context, token string) (string, error) {
	if len(token) > maxTokenBytes {
		return "", fmt.Errorf("%w: a token of %d bytes is no Kubernetes token", ErrInvalid, len(token))
	}
	key := sha256.Sum256([]byte(token))
	now := r.now()
	r.mu.Lock()
	c, ok := r.cache[key]
	r.mu.Unlock()
	if ok && now.Before(c.expires) {
		return c.user, c.err
	}
	select {
	case r.slots <- struct{}{}:
		defer func() { <-r.slots }()
	case <-ctx.Done():
		return "", unavailable(ctx.Err())
	}
	user, err := r.review(ctx, token)
	if errors.Is(err, ErrUnavailable) {
		return "", err // not cached: the next stream asks again
	}
	ttl := positiveTTL
	if err != nil {
		ttl = negativeTTL
	}
	r.mu.Lock()
	if len(r.cache) >= maxCached {
		r.evictLocked(now)
	}
	r.cache[key] = cached{user: user, err: err, expires: now.Add(ttl)}
	r.mu.Unlock()
	return user, err
}

func (r *Reviewer) review(ctx context.Context, token string) (string, error) {
	tr, err := r.kube.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: []string{r.audience}},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", unavailable(err)
	}
	st := tr.Status
	if !st.Authenticated {
		why := st.Error
		if why == "" {
			why = "the apiserver did not authenticate it"
		}
		return "", fmt.Errorf("%w for audience %q: %s", ErrInvalid, r.audience, clip(why))
	}
	// An authenticator that ignores audiences answers with none; only a
	// token the apiserver says is bound to ours is taken.
	if !slices.Contains(st.Audiences, r.audience) {
		return "", fmt.Errorf("%w: the token is not bound to audience %q (it is for %q)", ErrInvalid, r.audience, clip(strings.Join(st.Audiences, ",")))
	}
	ns, name, ok := ServiceAccountOf(st.User.Username)
	if !ok {
		return "", fmt.Errorf("%w: the token is user %q's", ErrNotServiceAccount, clip(st.User.Username))
	}
	return ns + "/" + name, nil
}

// unavailable wraps a failed review so that it is both ErrUnavailable
// and Temporary.
func unavailable(err error) error {
	return temporary{fmt.Errorf("%w: %w", ErrUnavailable, err)}
}

// evictLocked drops expired answers, and every answer if none had
// expired: the cache is an optimisation, its bound is what matters.
func (r *Reviewer) evictLocked(now time.Time) {
	for k, c := range r.cache {
		if !now.Before(c.expires) {
			delete(r.cache, k)
		}
	}
	if len(r.cache) >= maxCached {
		clear(r.cache)
	}
}

// ServiceAccountOf splits system:serviceaccount:<namespace>:<name>.
func ServiceAccountOf(username string) (namespace, name string, ok bool) {
	rest, ok := strings.CutPrefix(username, "system:serviceaccount:")
	if !ok {
		return "", "", false
	}
	namespace, name, ok = strings.Cut(rest, ":")
	return namespace, name, ok && namespace != "" && name != "" && !strings.Contains(name, ":")
}

// clip bounds what the apiserver or a client wrote before it reaches a
// log line or a refusal.
func clip(s string) string {
	n := 256
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
