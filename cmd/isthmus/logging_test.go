package main

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"

	"k8s.io/klog/v2"

	"github.com/isthmus-dev/isthmus/test/childproc"
)

// TestLogFlags: every role takes --log-level and --log-format (and their
// ISTHMUS_ variables); the deprecation warning the dns role logs for
// --zone shows their effect.
func TestLogFlags(t *testing.T) {
	if !childproc.Run(t) {
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
