package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestHubQuotaRole: `isthmus hub-quota` is a role of its own, not one of
// `isthmus all`'s, and refuses bad timings before it contacts anything.
func TestHubQuotaRole(t *testing.T) {
	for _, r := range roles() {
		if r.name == "hub-quota" {
			t.Error("isthmus all runs the hub's record counter, which belongs on the hub")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--debounce", "0s"}, "--debounce 0s: must be 10ms-1m"},
		{[]string{"--resync", "10s"}, "--resync 10s: must be 1m-1h"},
		{[]string{"--kubeconfig", "/dev/null"}, "loading this cluster's kubeconfig"},
	} {
		err := run(ctx, append([]string{"hub-quota", "--metrics-addr", ""}, tc.args...), slog.New(slog.DiscardHandler), io.Discard, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("isthmus hub-quota %v: %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
}
