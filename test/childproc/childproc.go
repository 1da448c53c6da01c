// Package childproc runs one test alone in a new process of its own test
// binary, for tests that set process-wide state that other tests of the
// package would race with: klog's logger, which may be set only before
// anything logs through it, while other tests leave client-go goroutines
// logging.
package childproc

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// env names the test the child process runs.
const env = "ISTHMUS_TEST_CHILD"

// Run runs the calling test alone in a new process of this test binary
// and reports its failures here; it returns true in that process, where
// the test then does its work:
//
//	if !childproc.Run(t) {
//		return
//	}
func Run(t *testing.T) bool {
	t.Helper()
	if os.Getenv(env) == t.Name() {
		return true
	}
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), env+"="+t.Name())
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Errorf("%s in its own process: %v\n%s", t.Name(), err, out)
	}
	return false
}

// InChild reports whether this process is a child Run started, for a
// TestMain that must then not set up what only the parent needs.
func InChild() bool {
	return os.Getenv(env) != ""
}
