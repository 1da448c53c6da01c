package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
)

// TestTunnelRoleRejectsBadFlags: bad input gets a clear error before
// anything is touched. The role itself runs end to end in test/tunnel.
func TestTunnelRoleRejectsBadFlags(t *testing.T) {
	base := []string{"tunnel", "--broker-kubeconfig", "/nonexistent", "--cluster-id", "a", "--endpoint", "192.0.2.1:51820"}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no endpoint", []string{"tunnel", "--cluster-id", "a"}, `--endpoint "": want ip:port`},
		{"bad implementation", append(base, "--wireguard-implementation", "fast"), `unknown WireGuard implementation "fast"`},
		{"bad endpoint", []string{"tunnel", "--broker-kubeconfig", "x", "--endpoint", "somewhere"}, `--endpoint "somewhere": want ip:port`},
		{"keepalive off", append(base, "--keepalive", "0s"), "it cannot be turned off"},
		{"long device name", append(base, "--device", "a-very-long-device"), "must have 1 to 15 characters"},
		{"in all", []string{"all", "--metrics-addr", "", "--kubeconfig", "/dev/null", "--tunnel-endpoint", "somewhere"}, `--tunnel-endpoint "somewhere": want ip:port`},
		{"stray argument", append(base, "extra"), `unexpected arguments ["extra"]`},
		{"empty kubeconfig", append(base, "--kubeconfig", "/dev/null"), "loading this cluster's kubeconfig"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			err := run(context.Background(), tt.args, slog.New(slog.DiscardHandler), io.Discard, &stderr)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("run(%q) = %v, want an error containing %q", tt.args, err, tt.want)
			}
		})
	}
}
