package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// Start-up reads are retried with a delay that doubles from
// firstStartRetry up to maxStartRetry.
const (
	firstStartRetry = 500 * time.Millisecond
	maxStartRetry   = 10 * time.Second
)

// retryStart runs a read a role needs before it can start (the cluster
// id, the broker credential) until it succeeds, fails for good, or ctx
// ends. A pod's first request can race what the same helm install
// creates beside it (its RBAC reaches the apiserver's authorizer through
// an informer) or an apiserver that is briefly away; exiting on that
// restarts the container, and each further restart waits longer under
// the kubelet's back-off. Meanwhile /readyz says what the role waits for.
func (e *env) retryStart(ctx context.Context, what string, read func(context.Context) error) error {
	delay := firstStartRetry
	for {
		err := read(ctx)
		if err == nil || !transient(err) {
			e.waiting.Store(nil)
			return err
		}
		why := fmt.Sprintf("%s: %v", what, err)
		e.waiting.Store(&why)
		if ctx.Err() == nil {
			e.log.Warn("start-up read failed; retrying", "what", what, "err", err, "retry_in", delay)
		}
		select {
		case <-ctx.Done():
			e.waiting.Store(nil)
			return fmt.Errorf("%s: %w (still failing when stopped: %w)", what, ctx.Err(), err)
		case <-time.After(delay):
		}
		delay = min(2*delay, maxStartRetry)
	}
}

// transient says whether a failed read may succeed when tried again: the
// apiserver answered with a status (forbidden until the RBAC arrives,
// not found until isthmusctl join has run, unavailable, throttled), or
// could not be reached. Anything else (a kubeconfig that does not parse,
// a cluster id that is no DNS label) stays wrong until a person fixes it.
func transient(err error) bool {
	var status apierrors.APIStatus
	var urlErr *url.Error
	var netErr net.Error
	return errors.As(err, &status) || errors.As(err, &urlErr) || errors.As(err, &netErr)
}

// startingCheck is a role's readiness until it registers its own: not
// ready, and what start-up waits for if it is waiting.
func (e *env) startingCheck() error {
	if w := e.waiting.Load(); w != nil {
		return errors.New("starting: waiting for " + *w)
	}
	return errors.New("starting")
}
