package main

import (
	"bytes"
	"context"
	"flag"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"strings"
	"testing"
	"time"
)

func TestParseWithEnv(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		want    map[string]string
		wantErr string
	}{
		{"flag only", []string{"--cluster-id", "a"}, nil, map[string]string{"cluster-id": "a", "tunnel-mtu": "1420"}, ""},
		{"env fills an unset flag", nil, map[string]string{"ISTHMUS_CLUSTER_ID": "b", "ISTHMUS_TUNNEL_MTU": "1380"},
			map[string]string{"cluster-id": "b", "tunnel-mtu": "1380"}, ""},
		{"the command line wins", []string{"--cluster-id", "a"}, map[string]string{"ISTHMUS_CLUSTER_ID": "b"}, map[string]string{"cluster-id": "a"}, ""},
		{"bad env value names the variable", nil, map[string]string{"ISTHMUS_TUNNEL_MTU": "big"}, nil, `ISTHMUS_TUNNEL_MTU="big" (--tunnel-mtu)`},
		{"stray argument", []string{"extra"}, nil, nil, `unexpected arguments ["extra"]`},
		{"unknown flag", []string{"--nope"}, nil, nil, "flag provided but not defined"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := flag.NewFlagSet("x", flag.ContinueOnError)
			fs.SetOutput(&bytes.Buffer{})
			fs.String("cluster-id", "", "")
			fs.Int("tunnel-mtu", 1420, "")
			err := parseWithEnv(fs, tt.args, func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok })
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tt.want {
				if got := fs.Lookup(k).Value.String(); got != v {
					t.Errorf("--%s = %q, want %q", k, got, v)
				}
			}
		})
	}
}

// TestAllHelp: `isthmus all -h` documents the shared flags once and every
// role's own flags under its prefix, and the environment scheme.
func TestAllHelp(t *testing.T) {
	var out bytes.Buffer
	err := run(context.Background(), []string{"all", "-h"}, slog.New(slog.DiscardHandler), io.Discard, &out)
	if err != flag.ErrHelp {
		t.Fatalf("isthmus all -h: %v, want flag.ErrHelp", err)
	}
	help := out.String()
	for _, want := range []string{"-cluster-id", "-broker-kubeconfig", "-kubeconfig", "-metrics-addr", "-region", "-lease-duration", "-dns-listen", "-dns-domain", "-tunnel-endpoint", "ISTHMUS_CLUSTER_ID"} {
		if !strings.Contains(help, want) {
			t.Errorf("help lacks %q:\n%s", want, help)
		}
	}
	// The cluster's facts are the process's, given once.
	for _, dup := range []string{"-agent-region", "-xds-region", "-agent-zone", "-xds-dataplane", "-agent-lease-duration", "-xds-gateway-service"} {
		// A flag's help line names it followed by a space (its type) or
		// a newline; a longer flag it starts (-xds-gateway-service-account)
		// is another flag.
		if strings.Contains(help, dup+" ") || strings.Contains(help, dup+"\n") {
			t.Errorf("help offers %q: a cluster fact given per role", dup)
		}
	}
	for _, r := range roles() {
		if !strings.Contains(help, r.about) {
			t.Errorf("help does not describe the %s role", r.name)
		}
	}
}

// TestAllStopsTogether: in `isthmus all` one role failing stops the
// others, and the error names the role.
func TestAllStopsTogether(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := run(ctx, []string{"all", "--metrics-addr", "", "--kubeconfig", "/dev/null", "--tunnel-endpoint", "192.0.2.1:51820", "--dns-listen", "127.0.0.1:0"},
		slog.New(slog.DiscardHandler), io.Discard, &bytes.Buffer{})
	if err == nil {
		t.Fatal("isthmus all with an empty kubeconfig ran")
	}
	for _, want := range []string{"agent: loading this cluster's kubeconfig", "dns: loading this cluster's kubeconfig", "tunnel: loading this cluster's kubeconfig"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

// TestNotReadyUntilTheRoleSaysSo: /readyz fails while a role has not yet
// registered its own check (it is still starting, or failing to), so a
// readiness probe never passes early; the role's check then replaces
// the placeholder.
func TestNotReadyUntilTheRoleSaysSo(t *testing.T) {
	registered := make(chan struct{})
	r := role{name: "slow", flags: func(*flag.FlagSet, string) func(context.Context, *env, *slog.Logger) error {
		return func(ctx context.Context, e *env, _ *slog.Logger) error {
			<-registered
			e.health.Add("slow", func() error { return nil })
			<-ctx.Done()
			return nil
		}
	}}
	ctx, cancel := context.WithCancel(context.Background())
	addr := freePort(t)
	done := make(chan error, 1)
	go func() {
		done <- runRoles(ctx, "slow", []role{r}, []string{"--metrics-addr", addr}, slog.New(slog.DiscardHandler), &bytes.Buffer{})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	waitUntil(t, "/healthz answers", func() bool { c, _ := get("http://" + addr + "/healthz"); return c == 200 })
	if code, body := get("http://" + addr + "/readyz"); code != 503 || !strings.Contains(body, "slow: starting") {
		t.Errorf("/readyz before the role registered its check: %d %q", code, body)
	}
	close(registered)
	waitUntil(t, "/readyz once the role's own check passes", func() bool { c, _ := get("http://" + addr + "/readyz"); return c == 200 })
}

// TestVersion: `isthmus version` prints the VCS stamp Go wrote into the
// binary ("(devel)" for a test binary, which has none).
func TestVersion(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"version"}, slog.New(slog.DiscardHandler), &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "isthmus ") || !strings.Contains(out.String(), "revision ") || !strings.Contains(out.String(), "go1.") {
		t.Errorf("isthmus version printed %q", out.String())
	}
}

// TestAgentImportCapFlag: the import cap cannot be turned off, neither
// with 0 nor with a negative number, and the refusal names the flag
// before anything is contacted.
func TestAgentImportCapFlag(t *testing.T) {
	for _, v := range []string{"0", "-1"} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := run(ctx, []string{"agent", "--max-imports-per-cluster", v, "--metrics-addr", "127.0.0.1:0"},
			slog.New(slog.DiscardHandler), io.Discard, io.Discard)
		cancel()
		if err == nil || !strings.Contains(err.Error(), "--max-imports-per-cluster "+v+": must be at least 1") {
			t.Errorf("--max-imports-per-cluster %s: %v", v, err)
		}
	}
}

// TestMemoryLimitFlag: --memory-limit reaches the runtime, a bad value is
// refused before anything starts, and GOMEMLIMIT wins over the flag.
func TestMemoryLimitFlag(t *testing.T) {
	before := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(before)
	if v, ok := os.LookupEnv("GOMEMLIMIT"); ok {
		os.Unsetenv("GOMEMLIMIT")
		defer os.Setenv("GOMEMLIMIT", v)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if err := runDNS(context.Background(), []string{"--memory-limit", "lots"}, log); err == nil || !strings.Contains(err.Error(), "--memory-limit") {
		t.Errorf("--memory-limit lots: %v", err)
	}
	if err := setMemoryLimit("300Mi", log); err != nil {
		t.Fatal(err)
	}
	if got := debug.SetMemoryLimit(-1); got != 300<<20 {
		t.Errorf("the runtime's limit is %d after --memory-limit 300Mi", got)
	}
	os.Setenv("GOMEMLIMIT", "400MiB")
	defer os.Unsetenv("GOMEMLIMIT")
	if err := setMemoryLimit("100Mi", log); err != nil {
		t.Fatal(err)
	}
	if got := debug.SetMemoryLimit(-1); got != 300<<20 {
		t.Errorf("the flag overrode GOMEMLIMIT: %d", got)
	}
}
