package install

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
)

// TestCachedBuildsACommitOnce: packages installing side by side build the
// commit's artifacts once and share them; a changed tree is built anew.
func TestCachedBuildsACommitOnce(t *testing.T) {
	root := t.TempDir()
	git := func(args ...string) {
		t.Helper()
		cmd := exec.Command("git", append([]string{"-C", root, "-c", "user.name=t", "-c", "user.email=t@t"}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	git("init", "-q")
	if err := os.WriteFile(filepath.Join(root, ".gitignore"), []byte("/bin/\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	git("add", ".gitignore")
	git("commit", "-q", "-m", "one")

	var builds atomic.Int32
	build := func(dir string) (*Artifacts, error) {
		builds.Add(1)
		a := &Artifacts{Isthmusctl: filepath.Join(dir, "isthmusctl"), Image: filepath.Join(dir, "isthmus-image.tar"), Version: "v0.0.0-1"}
		for _, f := range []string{a.Isthmusctl, a.Image} {
			if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
				return nil, err
			}
		}
		return a, nil
	}

	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, err := cached(root, build)
			if err != nil {
				t.Error(err)
				return
			}
			if a.Version != "v0.0.0-1" || !exists(a.Image) {
				t.Errorf("cached artifacts %+v", a)
			}
		}()
	}
	wg.Wait()
	if n := builds.Load(); n != 1 {
		t.Fatalf("four installers of one commit built %d times, want 1", n)
	}

	// A build that left no record (it died half way) is done again.
	head, _ := commitOf(root)
	if err := os.Remove(filepath.Join(root, "bin", "install-cache", head, "artifacts.json")); err != nil {
		t.Fatal(err)
	}
	if _, err := cached(root, build); err != nil {
		t.Fatal(err)
	}
	if n := builds.Load(); n != 2 {
		t.Fatalf("after the record was lost: %d builds, want 2", n)
	}

	// A tree with changes is nobody's commit: built every time, each
	// build in a directory of its own.
	if err := os.WriteFile(filepath.Join(root, "new.go"), []byte("package x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var dirs []string
	for range 2 {
		a, err := cached(root, build)
		if err != nil {
			t.Fatal(err)
		}
		dirs = append(dirs, filepath.Dir(a.Image))
	}
	if n := builds.Load(); n != 4 {
		t.Fatalf("a changed tree was built %d times in two installs, want 2 more than 2", n)
	}
	if dirs[0] == dirs[1] || filepath.Base(dirs[0]) == head || filepath.Base(dirs[1]) == head {
		t.Fatalf("a changed tree's builds went to %v, want a directory each, not the commit's", dirs)
	}
	if !exists(filepath.Join(root, "bin", "install-cache", head, "artifacts.json")) {
		t.Error("a changed tree's build removed the artifacts of the commit it changes")
	}

	// Each stays while its process runs, and goes after: the first one's
	// owner is made a process that has ended.
	ended := exec.Command("true")
	if err := ended.Run(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dirs[0], ownerFile), []byte(strconv.Itoa(ended.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := cached(root, build); err != nil {
		t.Fatal(err)
	}
	if exists(dirs[0]) {
		t.Errorf("%s outlived the process that built it", dirs[0])
	}
	if !exists(dirs[1]) {
		t.Errorf("%s was removed while its process runs", dirs[1])
	}
	// A commit's build keeps them too, while their process runs.
	git("add", "new.go")
	git("commit", "-q", "-m", "two")
	if _, err := cached(root, build); err != nil {
		t.Fatal(err)
	}
	if !exists(dirs[1]) {
		t.Errorf("the next commit's build removed %s, which a running process uses", dirs[1])
	}
}
