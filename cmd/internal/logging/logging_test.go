package logging

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"

	"k8s.io/klog/v2"

	"github.com/isthmus-dev/isthmus/test/childproc"
)

// TestKlogIsRoutedIntoSlog: client-go's own log lines (klog, as leader
// election and the informers write them) come out through our logger, as
// JSON objects with their message and key-value pairs, not as klog text.
func TestKlogIsRoutedIntoSlog(t *testing.T) {
	if !childproc.Run(t) {
		return
	}
	var buf bytes.Buffer
	if _, err := New(&buf, Flags{Level: slog.LevelInfo, Format: "json"}); err != nil {
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

// TestLevelSetsKlogVerbosity: the level decides which of client-go's
// V(n) lines are made and written, at slog level -n: debug lets V(4)
// through and not V(5), debug-2 lets V(6) (client-go's request lines)
// through, info none of them.
func TestLevelSetsKlogVerbosity(t *testing.T) {
	if !childproc.Run(t) {
		return
	}
	t.Cleanup(klog.ClearLogger)
	for _, tt := range []struct {
		level string
		want  []string // the V(n) lines written, of V(1) to V(7)
	}{
		{"info", nil},
		{"warn", nil},
		{"debug", []string{"v1", "v2", "v3", "v4"}},
		{"debug-2", []string{"v1", "v2", "v3", "v4", "v5", "v6"}},
		{"debug+2", []string{"v1", "v2"}},
	} {
		var f Flags
		fs := flag.NewFlagSet("test", flag.ContinueOnError)
		f.Register(fs, "text")
		if err := fs.Parse([]string{"--log-level", tt.level}); err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if _, err := New(&buf, f); err != nil {
			t.Fatal(err)
		}
		for v := 1; v <= 7; v++ {
			klog.V(klog.Level(v)).InfoS(fmt.Sprintf("v%d", v))
		}
		klog.Flush()
		var got []string
		for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
			if _, msg, ok := strings.Cut(line, "msg="); ok {
				got = append(got, msg)
			}
		}
		if strings.Join(got, ",") != strings.Join(tt.want, ",") {
			t.Errorf("--log-level %s: wrote %v, want %v\n%s", tt.level, got, tt.want, buf.String())
		}
	}
}

// TestFlags: the defaults, and a format we do not write refused by name.
func TestFlags(t *testing.T) {
	var f Flags
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	f.Register(fs, "text")
	if f.Level != slog.LevelInfo || f.Format != "text" {
		t.Errorf("defaults %v %q, want INFO text", f.Level, f.Format)
	}
	if err := fs.Parse([]string{"--log-level", "loud"}); err == nil {
		t.Error("--log-level loud parsed")
	}
	f.Format = "logfmt"
	if _, err := New(io.Discard, f); err == nil || !strings.Contains(err.Error(), `--log-format "logfmt": want json or text`) {
		t.Errorf("--log-format logfmt: %v", err)
	}
}
