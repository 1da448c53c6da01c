package release

import (
	"bytes"
	"debug/buildinfo"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/isthmus-dev/isthmus/test/helmtest"
)

// build runs build.sh for isthmusctl on linux/amd64, without the image and
// the isthmus binary (test/image builds both twice and compares their
// digests), into a new directory, and returns the directory.
func build(t *testing.T, helm string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "release")
	cmd := exec.Command("bash", "build.sh", out)
	cmd.Env = append(os.Environ(), "ISTHMUS_RELEASE_PLATFORMS=linux/amd64", "ISTHMUS_RELEASE_COMMANDS=isthmusctl", "ISTHMUS_RELEASE_IMAGE=0", "ISTHMUS_HELM="+helm)
	if log, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build.sh: %v\n%s", err, log)
	}
	return out
}

// TestReleaseIsReproducible builds the release twice and compares the
// checksums, checks them against the files, and reads back what a user
// installs: the binaries' VCS stamp and the charts as helm sees them.
func TestReleaseIsReproducible(t *testing.T) {
	if fi, err := os.Stat("../../.git"); err == nil && !fi.IsDir() {
		// go build finds a repository only where .git is a directory
		// (cmd/go/internal/vcs), and build.sh refuses unstamped binaries;
		// CI and releases build from a clone.
		t.Skip("a git worktree: go build stamps no VCS information here; run this in a clone")
	}
	// build.sh runs from the repository's root: the path must not be
	// relative to this directory.
	helm, err := filepath.Abs(helmtest.Find(t, "../.."))
	if err != nil {
		t.Fatal(err)
	}
	first, second := build(t, helm), build(t, helm)
	sums1, err := os.ReadFile(filepath.Join(first, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	sums2, err := os.ReadFile(filepath.Join(second, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(sums1, sums2) {
		t.Errorf("two builds of one commit differ:\n%s\n%s", sums1, sums2)
	}
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(string(sums1)), "\n") {
		f := strings.Fields(line)
		names = append(names, f[len(f)-1])
	}
	version := chartVersion(t, "../../charts/isthmus/Chart.yaml")
	want := []string{"isthmus-" + version + ".tgz", "isthmus-broker-" + chartVersion(t, "../../charts/isthmus-broker/Chart.yaml") + ".tgz",
		"isthmusctl-linux-amd64"}
	if strings.Join(names, " ") != strings.Join(want, " ") {
		t.Errorf("release holds %v, want %v", names, want)
	}
	check := exec.Command("sha256sum", "-c", "SHA256SUMS")
	check.Dir = first
	if out, err := check.CombinedOutput(); err != nil {
		t.Errorf("sha256sum -c: %v\n%s", err, out)
	}

	head, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, bin := range []string{"isthmusctl-linux-amd64"} {
		bi, err := buildinfo.ReadFile(filepath.Join(first, bin))
		if err != nil {
			t.Fatal(err)
		}
		settings := map[string]string{}
		for _, s := range bi.Settings {
			settings[s.Key] = s.Value
		}
		if v := bi.Main.Version; !strings.HasPrefix(v, "v") || settings["vcs.revision"] != strings.TrimSpace(string(head)) {
			t.Errorf("%s: version %q, revision %q; want a VCS version of HEAD %s", bin, v, settings["vcs.revision"], head)
		}
		if settings["-trimpath"] != "true" || settings["CGO_ENABLED"] != "0" {
			t.Errorf("%s: built with -trimpath=%s CGO_ENABLED=%s; want a static, path-free build", bin, settings["-trimpath"], settings["CGO_ENABLED"])
		}
	}
	for _, chart := range []string{"isthmus", "isthmus-broker"} {
		tgz := filepath.Join(first, chart+"-"+chartVersion(t, "../../charts/"+chart+"/Chart.yaml")+".tgz")
		out, err := exec.Command(helm, "show", "chart", tgz).CombinedOutput()
		if err != nil {
			t.Fatalf("helm show chart %s: %v\n%s", tgz, err, out)
		}
		if !strings.Contains(string(out), "name: "+chart+"\n") {
			t.Errorf("%s: helm reads another chart:\n%s", tgz, out)
		}
		// The member chart carries the MCS CRDs; the broker chart its own.
		out, err = exec.Command(helm, "show", "crds", tgz).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "kind: CustomResourceDefinition") {
			t.Errorf("helm show crds %s: %v\n%s", tgz, err, out)
		}
	}
}

func chartVersion(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "version: "); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("%s has no version", path)
	return ""
}
