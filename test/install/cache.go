package install

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/isthmus-dev/isthmus/test/cluster"
)

// cached returns the artifacts of the checked-out commit from
// bin/install-cache/<commit>/, building them there with build the first
// time. The test packages that install (the install and upgrade tests,
// verify, the conformance suite, the demo) run side by side in make test
// and each used to build the same image; `make demo` run twice on one
// commit built it twice. A file lock makes the first builder the only one;
// the others wait for it and read what it wrote.
//
// A tree with changes is not a commit: its version is stamped "+dirty" and
// its contents are nobody's key, so it is built into a directory of its
// own, every time (bin/install-cache/dirty-*, holding the PID of the
// process that uses it). Such a directory goes once that process has
// ended: the next build removes it, as it removes other commits'.
func cached(root string, build func(dir string) (*Artifacts, error)) (*Artifacts, error) {
	cache := filepath.Join(root, "bin", "install-cache")
	commit, clean := commitOf(root)
	if !clean {
		if err := os.MkdirAll(cache, 0o755); err != nil {
			return nil, err
		}
		prune(cache, commit) // HEAD's own artifacts stay for its next clean run
		dir, err := os.MkdirTemp(cache, dirtyPrefix)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
			return nil, err
		}
		return build(dir)
	}
	dir := filepath.Join(cache, commit)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	lock, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return nil, fmt.Errorf("locking %s: %w", dir, err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)

	done := filepath.Join(dir, "artifacts.json")
	if b, err := os.ReadFile(done); err == nil {
		var a Artifacts
		if err := json.Unmarshal(b, &a); err == nil && exists(a.Isthmusctl) && exists(a.Image) {
			return &a, nil
		}
	}
	a, err := build(dir)
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(a)
	if err != nil {
		return nil, err
	}
	// Written last, after the files it names: a build that died half way
	// leaves no record, and the next one starts over.
	if err := os.WriteFile(done, b, 0o644); err != nil {
		return nil, err
	}
	prune(filepath.Dir(dir), commit)
	return a, nil
}

const dirtyPrefix, ownerFile = "dirty-", "owner.pid"

// prune removes other commits' artifacts (an image is tens of MB): a
// checkout has one HEAD, and a later run of an older commit builds again.
// A changed tree's build stays while the process that made it runs (a
// commit made meanwhile must not take its image away mid-test).
func prune(cache, keep string) {
	entries, err := os.ReadDir(cache)
	if err != nil {
		return
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), dirtyPrefix) && inUse(filepath.Join(cache, e.Name())) {
			continue
		}
		if e.Name() != keep {
			os.RemoveAll(filepath.Join(cache, e.Name()))
		}
	}
}

// commitOf is HEAD ("" outside git) and whether the work tree matches
// it, as Go's VCS stamp judges (`git status --porcelain` empty; bin/ is
// ignored).
func commitOf(root string) (string, bool) {
	head, err := exec.Command("git", "-C", root, "rev-parse", "HEAD").Output()
	if err != nil {
		return "", false
	}
	status, err := exec.Command("git", "-C", root, "status", "--porcelain").Output()
	return strings.TrimSpace(string(head)), err == nil && len(bytes.TrimSpace(status)) == 0
}

// inUse says whether the process that built into a changed tree's
// directory still runs (a directory without its owner's PID yet is being
// made).
func inUse(dir string) bool {
	pid, err := cluster.ReadPID(filepath.Join(dir, ownerFile))
	if errors.Is(err, os.ErrNotExist) {
		return true
	}
	return err == nil && cluster.Alive(pid)
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
