package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/isthmus-dev/isthmus/test/cluster"
)

// TestLogFlags runs the binary with --log-level and --log-format against
// a real apiserver: client-go's own lines (klog, here the request tracer
// that --log-level debug-2 turns on) come out through our logger in the
// format asked for, none at the default level, and a format we do not
// write is a usage error. The command fails (the broker cluster has not
// joined anything), which is beside the point: its requests are logged.
func TestLogFlags(t *testing.T) {
	cs := cluster.Start(t, cluster.Options{Broker: true})
	status := []string{"status", "--kubeconfig", cs.Kubeconfig, "--context", "broker"}
	secretURL := "/api/v1/namespaces/isthmus-system/secrets/isthmus-broker"

	r := exe(t, "isthmusctl", append(status, "--log-level", "debug-2", "--log-format", "json")...)
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	var responses int
	for _, line := range lines[:len(lines)-1] {
		var entry map[string]any
		if err := json.Unmarshal([]byte(line), &entry); err != nil {
			t.Errorf("--log-format json: a line that is not JSON: %v\n%s", err, line)
			continue
		}
		if entry["msg"] == "Response" && entry["level"] == "DEBUG-2" && strings.Contains(entry["url"].(string), secretURL) {
			responses++
		}
	}
	if responses == 0 {
		t.Errorf("--log-level debug-2: no JSON line for the GET of %s:\n%s", secretURL, r)
	}
	if last := lines[len(lines)-1]; r.code != exitError || !strings.HasPrefix(last, "isthmusctl: ") {
		t.Errorf("want exit 2 and the error as the last line, plain:\n%s", r)
	}

	r = exe(t, "isthmusctl", append(status, "--log-level=debug-2", "--log-format=text")...)
	if !strings.Contains(r.stderr, "level=DEBUG-2 msg=Response") || !strings.Contains(r.stderr, secretURL) || strings.Contains(r.stderr, `{"`) {
		t.Errorf("--log-format text: want key=value Response lines for %s, no JSON:\n%s", secretURL, r)
	}

	r = exe(t, "isthmusctl", status...)
	if strings.Contains(r.stderr, "Response") || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
		t.Errorf("default level: want only the error on stderr:\n%s", r)
	}

	r = exe(t, "isthmusctl", append(status, "--log-format", "logfmt")...)
	if r.code != exitError || !strings.Contains(r.stderr, `--log-format "logfmt": want json or text`) {
		t.Errorf("--log-format logfmt: want exit 2 naming the format:\n%s", r)
	}
	r = exe(t, "isthmusctl", append(status, "--log-level", "loud")...)
	if r.code != exitError || !strings.Contains(r.stderr, "--log-level") {
		t.Errorf("--log-level loud: want exit 2 naming the flag:\n%s", r)
	}
}
