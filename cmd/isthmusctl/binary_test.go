package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// The tests of behaviour and exit codes run the real binaries, built once
// per test binary: isthmusctl (and its kubectl-isthmus name) and isthmus,
// whose roles run beside them as they would on a member.
var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

func binaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "isthmusctl-test-bin-")
		if buildErr != nil {
			return
		}
		// -buildvcs=auto: the version stamp when built from a checkout,
		// whatever GOFLAGS says, as make build does.
		out, err := exec.Command("go", "build", "-buildvcs=auto", "-o", binDir+"/",
			"github.com/isthmus-dev/isthmus/cmd/isthmusctl", "github.com/isthmus-dev/isthmus/cmd/isthmus").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("building isthmusctl and isthmus: %v\n%s", err, out)
			return
		}
		buildErr = os.Symlink("isthmusctl", filepath.Join(binDir, "kubectl-isthmus"))
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// result is one run of a binary.
type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// exe runs bin/name with args and returns what it printed and its exit code.
func exe(t *testing.T, name string, args ...string) result {
	t.Helper()
	cmd := exec.Command(filepath.Join(binaries(t), name), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	code := 0
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatalf("running %s: %v", name, err)
	}
	t.Logf("$ %s %s\n%s%s(exit %d)", name, strings.Join(args, " "), stdout.String(), stderr.String(), code)
	return result{stdout.String(), stderr.String(), code}
}

// daemon runs `isthmus <args>` until the test ends or stop is called,
// and waits for its /readyz on metricsAddr.
func daemon(t *testing.T, metricsAddr string, args ...string) (stop func()) {
	t.Helper()
	logf, err := os.Create(filepath.Join(t.TempDir(), "isthmus.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(binaries(t), "isthmus"), append(args, "--metrics-addr", metricsAddr)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			_ = cmd.Process.Signal(os.Interrupt)
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
			logf.Close()
		})
	}
	t.Cleanup(stop)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		select {
		case <-done:
			log, _ := os.ReadFile(logf.Name())
			t.Fatalf("isthmus %s exited:\n%s", strings.Join(args, " "), log)
		default:
		}
		if resp, err := http.Get("http://" + metricsAddr + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return stop
			}
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logf.Name())
			t.Fatalf("isthmus %s not ready in 2 minutes:\n%s", strings.Join(args, " "), log)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// freeAddr is a loopback address with a port free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// eventually polls check until it passes or the timeout ends.
func eventually(t *testing.T, timeout time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still not true after %v: %v", what, timeout, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
