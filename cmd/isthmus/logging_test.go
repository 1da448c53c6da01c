package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"testing"

	"k8s.io/klog/v2"
)

// logChildEnv names the test a child process runs. klog's logger is
// process-wide and may be set only before anything logs through it (main
// does so before any role starts), but other tests of this package leave
// client-go goroutines logging; so the logging tests run in a process of
// their own, with no clusterset.
const logChildEnv = "ISTHMUS_TEST_LOG_CHILD"

// inChild runs the calling test alone in a new process of this test
// binary and reports its failures here; it returns true in that process,
// where the test then does its work.
func inChild(t *testing.T) bool {
	t.Helper()
	if os.Getenv(logChildEnv) == t.Name() {
		return true
	}
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), logChildEnv+"="+t.Name())
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Errorf("%s in its own process: %v\n%s", t.Name(), err, out)
	}
	return false
}

// TestKlogIsRoutedIntoSlog: client-go's own log lines (klog, as leader
// election and the informers write them) come out through our logger, as
// JSON objects with their message and key-value pairs, not as klog text.
func TestKlogIsRoutedIntoSlog(t *testing.T) {
	if !inChild(t) {
		return
	}
	var buf bytes.Buffer
	if _, err := newLogger(&buf, logFlags{level: slog.LevelInfo, format: "json"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(klog.ClearLogger)
	klog.InfoS("successfully acquired lease", "lease", "isthmus-system/isthmus-agent")
	klog.Infof("plain %s line", "klog")
	klog.Background().WithName("reflector").Info("watch ended", "resource", "services")
	klog.ErrorS(io.EOF, "watch failed")
	klog.Flush()

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("got %d lines, want 4:\n%s", len(lines), buf.String())
	}
	for i, want := range []map[string]any{
		{"msg": "successfully acquired lease", "lease": "isthmus-system/isthmus-agent", "level": "INFO"},
		{"msg": "plain klog line", "level": "INFO"},
		{"msg": "watch ended", "resource": "services", "logger": "reflector"},
		{"msg": "watch failed", "err": "EOF", "level": "ERROR"},
	} {
		var got map[string]any
		if err := json.Unmarshal([]byte(lines[i]), &got); err != nil {
			t.Errorf("line %d is not JSON: %v\n%s", i, err, lines[i])
			continue
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("line %d: %s = %v, want %v\n%s", i, k, got[k], v, lines[i])
			}
		}
	}
}

// TestLogFlags: every role takes --log-level and --log-format (and their
// ISTHMUS_ variables); the deprecation warning the dns role logs for
// --zone shows their effect.
func TestLogFlags(t *testing.T) {
	if !inChild(t) {
		return
	}
	t.Cleanup(klog.ClearLogger)
	tests := []struct {
		flags   []string
		want    []string // in stderr
		notWant string
	}{
		{nil, []string{`{"time":`, `"level":"WARN"`, `"role":"dns"`, "--zone (ISTHMUS_ZONE) is deprecated"}, ""},
		{[]string{"--log-format", "text"}, []string{"level=WARN", "role=dns", `msg="--zone (ISTHMUS_ZONE) is deprecated`}, `{"time"`},
		{[]string{"--log-level", "error"}, nil, "deprecated"},
		{[]string{"--log-format", "logfmt"}, []string{}, "deprecated"},
	}
	for _, tt := range tests {
		var stderr bytes.Buffer
		args := append([]string{"dns", "--kubeconfig", "/dev/null", "--metrics-addr", "", "--zone", "example.test"}, tt.flags...)
		err := run(context.Background(), args, nil, io.Discard, &stderr)
		if err == nil {
			t.Fatalf("%v: ran with an empty kubeconfig", tt.flags)
		}
		if tt.want != nil && len(tt.want) == 0 {
			if !strings.Contains(err.Error(), `--log-format "logfmt": want json or text`) {
				t.Errorf("%v: error %v, want one naming the format", tt.flags, err)
			}
		}
		for _, w := range tt.want {
			if !strings.Contains(stderr.String(), w) {
				t.Errorf("%v: stderr lacks %q:\n%s", tt.flags, w, stderr.String())
			}
		}
		if tt.notWant != "" && strings.Contains(stderr.String(), tt.notWant) {
			t.Errorf("%v: stderr has %q:\n%s", tt.flags, tt.notWant, stderr.String())
		}
	}
}
