package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"syscall"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

func TestTransient(t *testing.T) {
	forbidden := apierrors.NewForbidden(schema.GroupResource{Resource: "secrets"}, "isthmus-broker", errors.New("no RBAC yet"))
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"forbidden", forbidden, true},
		{"forbidden, wrapped", fmt.Errorf("reading the broker credential: %w", forbidden), true},
		{"not found", apierrors.NewNotFound(schema.GroupResource{Resource: "secrets"}, "isthmus-broker"), true},
		{"unavailable", apierrors.NewServiceUnavailable("etcd"), true},
		{"refused", &url.Error{Op: "Get", URL: "https://10.96.0.1", Err: syscall.ECONNREFUSED}, true},
		{"a bad kubeconfig", errors.New("parsing the broker kubeconfig: yaml: line 3"), false},
		{"a bad cluster id", errors.New(`cluster id "A_B" is not a DNS label`), false},
	} {
		if got := transient(tc.err); got != tc.want {
			t.Errorf("%s: transient(%v) = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}

// TestRetryStart: a start-up read forbidden at first is tried again until
// it passes, /readyz saying meanwhile what it waits for; a lasting error
// ends it at once; stopping ends the wait with both causes.
func TestRetryStart(t *testing.T) {
	forbidden := apierrors.NewForbidden(schema.GroupResource{Group: "about.k8s.io", Resource: "clusterproperties"}, "cluster.clusterset.k8s.io", errors.New("no RBAC yet"))
	e := &env{log: slog.New(slog.DiscardHandler)}
	calls := 0
	var seen []string
	err := e.retryStart(context.Background(), "the cluster id", func(context.Context) error {
		if calls++; calls < 3 {
			return forbidden
		}
		seen = append(seen, e.startingCheck().Error())
		return nil
	})
	if err != nil || calls != 3 {
		t.Fatalf("retryStart = %v after %d reads, want nil after 3", err, calls)
	}
	if len(seen) != 1 || !strings.Contains(seen[0], "starting: waiting for the cluster id: ") || !strings.Contains(seen[0], "forbidden") {
		t.Errorf("readiness while retrying: %q", seen)
	}
	if got := e.startingCheck().Error(); got != "starting" {
		t.Errorf("readiness once the read passed: %q, want starting (until the role registers its own)", got)
	}

	calls = 0
	lasting := errors.New(`cluster id "A_B" is not a DNS label`)
	if err := e.retryStart(context.Background(), "the cluster id", func(context.Context) error { calls++; return lasting }); err != lasting || calls != 1 {
		t.Errorf("a lasting error: %v after %d reads, want it after 1", err, calls)
	}

	ctx, cancel := context.WithCancel(context.Background())
	err = e.retryStart(ctx, "the broker credential", func(context.Context) error { cancel(); return forbidden })
	if !errors.Is(err, context.Canceled) || !apierrors.IsForbidden(err) {
		t.Errorf("stopped while retrying: %v, want the cancellation and the last error", err)
	}
}
