package cluster

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// binaries are the paths of the real Kubernetes parts built by test/tools.
type binaries struct {
	apiserver, controllerManager, scheduler, proxy, etcd, kwok string
	kwokStages                                                 string
	// kubelet is checked only when real nodes are asked for.
	kubelet string
}

// findBinaries locates the tools build: dir if set, else
// $ISTHMUS_TOOLS_DIR, else what test/tools/build.sh --print reports.
func findBinaries(dir string) (binaries, error) {
	if dir == "" {
		dir = os.Getenv("ISTHMUS_TOOLS_DIR")
	}
	if dir == "" {
		var err error
		if dir, err = toolsDirFromBuildScript(); err != nil {
			return binaries{}, err
		}
	}
	b := binaries{
		apiserver:         filepath.Join(dir, "kube-apiserver"),
		controllerManager: filepath.Join(dir, "kube-controller-manager"),
		scheduler:         filepath.Join(dir, "kube-scheduler"),
		proxy:             filepath.Join(dir, "kube-proxy"),
		etcd:              filepath.Join(dir, "etcd"),
		kwok:              filepath.Join(dir, "kwok"),
		kwokStages:        filepath.Join(dir, "kwok-stages.yaml"),
		kubelet:           filepath.Join(dir, "kubelet"),
	}
	for _, p := range []string{b.apiserver, b.controllerManager, b.scheduler, b.proxy, b.etcd, b.kwok, b.kwokStages} {
		if _, err := os.Stat(p); err != nil {
			return binaries{}, fmt.Errorf("test Kubernetes binaries incomplete in %s (run `make tools`): %w", dir, err)
		}
	}
	return b, nil
}

func toolsDirFromBuildScript() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("locating test/tools: no caller information")
	}
	script := filepath.Join(filepath.Dir(file), "..", "tools", "build.sh")
	out, err := exec.Command("bash", script, "--print").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("test Kubernetes binaries not built (run `make tools`): %s", strings.TrimSpace(string(ee.Stderr)))
		}
		return "", fmt.Errorf("running %s: %w", script, err)
	}
	return strings.TrimSpace(string(out)), nil
}
