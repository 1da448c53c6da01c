package cluster

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
)

// startUnderlay builds the images every real node imports and starts the
// underlay: a network namespace of the harness's own holding a bridge that
// each member's node joins with a veth. The bridge is the only link
// between nodes; no node has a route to another member's pod range, so
// pods of different members reach each other only through a tunnel a test
// sets up. It returns the image archives.
func (cs *Clusterset) startUnderlay(ctx context.Context) ([]string, error) {
	images, err := buildNodeImages(ctx, filepath.Join(cs.Dir, "images"))
	if err != nil {
		return nil, err
	}
	cs.underlay = &process{
		name:    "underlay",
		bin:     "unshare",
		args:    []string{"--net", "--", "sleep", "infinity"},
		exe:     resolve("sleep"),
		logPath: filepath.Join(cs.Dir, "underlay.log"),
		reg:     cs.reg,
	}
	pid, err := startHolder(ctx, cs.underlay)
	if err != nil {
		return nil, err
	}
	for _, step := range [][]string{
		{"ip", "link", "add", underlayBridge, "type", "bridge"},
		{"ip", "link", "set", underlayBridge, "up"},
	} {
		cmd := exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(pid), "-n", "--"}, step...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("underlay: %s: %w: %s", strings.Join(step, " "), err, out)
		}
	}
	return images, nil
}

// buildNodeImages runs test/image's nodeimages command (its own module,
// with go-containerregistry) to write the pause and test server images
// into dir. The Go build cache makes it a few seconds after the first time.
func buildNodeImages(ctx context.Context, dir string) ([]string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return nil, errors.New("locating test/image: no caller information")
	}
	module := filepath.Join(filepath.Dir(file), "..", "image")
	cmd := exec.CommandContext(ctx, "go", "run", "./nodeimages", "-out", dir)
	cmd.Dir = module
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("building the node images in %s: %w: %s", module, err, out)
	}
	return []string{filepath.Join(dir, "pause.tar"), filepath.Join(dir, "testserver.tar")}, nil
}
