package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
)

func spec() Spec {
	return Spec{
		Platforms: []Platform{{OS: "linux", Arch: "amd64", Binary: []byte("amd64 binary")}, {OS: "linux", Arch: "arm64", Binary: []byte("arm64 binary")}},
		CACerts:   []byte("-----BEGIN CERTIFICATE-----\n"),
		Created:   time.Date(2026, 12, 6, 1, 0, 0, 0, time.UTC),
		Labels:    map[string]string{"org.opencontainers.image.version": "v0.0.0-test"},
		Refs:      []string{"ghcr.io/isthmus-dev/isthmus:0.1.0"},
	}
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// TestWriteIsDeterministic: equal inputs give the same index digest and
// the same archive bytes, whenever they are written; another binary gives
// another digest.
func TestWriteIsDeterministic(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.tar"), filepath.Join(dir, "b.tar")
	d1, err := Write(spec(), a)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // a clock leaking into the output would now show
	d2, err := Write(spec(), b)
	if err != nil {
		t.Fatal(err)
	}
	if d1 != d2 || fileSum(t, a) != fileSum(t, b) {
		t.Errorf("two writes of one spec differ: %s vs %s", d1, d2)
	}
	other := spec()
	other.Platforms[1].Binary = []byte("another arm64 binary")
	d3, err := Write(other, filepath.Join(dir, "c.tar"))
	if err != nil {
		t.Fatal(err)
	}
	if d3 == d1 {
		t.Error("a different binary gave the same digest")
	}
}

// readArchive unpacks an OCI layout archive into a directory and opens it
// as go-containerregistry's layout reader (crane's own).
func readArchive(t *testing.T, archive string) layout.Path {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dir := t.TempDir()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		target := filepath.Join(dir, filepath.FromSlash(h.Name))
		if h.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(target, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(target, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestArchiveLayout: the archive is an OCI layout whose index names the
// image for containerd and for OCI tools, and holds one image per
// platform that runs the binary as the non-root user.
func TestArchiveLayout(t *testing.T) {
	out := filepath.Join(t.TempDir(), "image.tar")
	digest, err := Write(spec(), out)
	if err != nil {
		t.Fatal(err)
	}
	p := readArchive(t, out)
	top, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := top.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 || im.Manifests[0].Digest != digest {
		t.Fatalf("index.json lists %+v; want the one index %s", im.Manifests, digest)
	}
	ann := im.Manifests[0].Annotations
	if ann["io.containerd.image.name"] != "ghcr.io/isthmus-dev/isthmus:0.1.0" || ann["org.opencontainers.image.ref.name"] != "ghcr.io/isthmus-dev/isthmus:0.1.0" {
		t.Errorf("index annotations %v do not name the image", ann)
	}
	idx, err := top.ImageIndex(digest)
	if err != nil {
		t.Fatal(err)
	}
	manifest, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	archs := map[string]bool{}
	for _, d := range manifest.Manifests {
		archs[d.Platform.OS+"/"+d.Platform.Architecture] = true
		img, err := idx.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cf.Architecture != d.Platform.Architecture || cf.Config.User != "65532:65532" || strings.Join(cf.Config.Entrypoint, " ") != entrypoint {
			t.Errorf("%s: config arch %s user %q entrypoint %v", d.Platform.Architecture, cf.Architecture, cf.Config.User, cf.Config.Entrypoint)
		}
		checkRootfs(t, img, d.Platform)
	}
	if !archs["linux/amd64"] || !archs["linux/arm64"] {
		t.Errorf("platforms %v; want linux/amd64 and linux/arm64", archs)
	}
}

func checkRootfs(t *testing.T, img v1.Image, p *v1.Platform) {
	t.Helper()
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("%s: %d layers (%v); want 1", p.Architecture, len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	files := map[string]*tar.Header{}
	contents := map[string]string{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name] = h
		data, _ := io.ReadAll(tr)
		contents[h.Name] = string(data)
	}
	bin := files["usr/local/bin/isthmus"]
	if bin == nil || bin.Mode != 0o755 || contents["usr/local/bin/isthmus"] != p.Architecture+" binary" {
		t.Errorf("%s: the binary is missing, not executable or another platform's", p.Architecture)
	}
	if !strings.Contains(contents["etc/passwd"], "nonroot:x:65532:65532:") || files["etc/ssl/certs/ca-certificates.crt"] == nil {
		t.Errorf("%s: no nonroot user or no CA bundle", p.Architecture)
	}
	if h := files["tmp/"]; h == nil || h.Mode != 0o1777 {
		t.Errorf("%s: /tmp missing or not sticky and world-writable", p.Architecture)
	}
}

// TestBuildFromTree runs make image's script twice on this checkout: the
// same commit gives the same digest, both platforms are there, and the
// version is the VCS stamp, never "dev" or "(devel)".
func TestBuildFromTree(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	var outs []string
	var logs []string
	for i := range 2 {
		out := filepath.Join(t.TempDir(), "image.tar")
		cmd := exec.Command("bash", filepath.Join(root, "test/image/build.sh"), out)
		cmd.Dir = root
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		stdout, err := cmd.Output()
		if err != nil {
			t.Fatalf("build %d: %v\n%s", i+1, err, stderr.String())
		}
		outs = append(outs, out)
		logs = append(logs, string(stdout))
	}
	if fileSum(t, outs[0]) != fileSum(t, outs[1]) {
		t.Errorf("two builds of one commit differ:\n%s\n%s", logs[0], logs[1])
	}
	p := readArchive(t, outs[0])
	top, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := top.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	idx, err := top.ImageIndex(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	manifest, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(manifest.Manifests) != 2 {
		t.Fatalf("%d platforms; want 2", len(manifest.Manifests))
	}
	img, err := idx.Image(manifest.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	version := cf.Config.Labels["org.opencontainers.image.version"]
	if version == "" || version == "dev" || version == "(devel)" || !strings.HasPrefix(version, "v") {
		t.Errorf("image version label %q; want the VCS stamp", version)
	}
	rev, err := exec.Command("git", "-C", root, "rev-parse", "HEAD").Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := cf.Config.Labels["org.opencontainers.image.revision"]; got != strings.TrimSpace(string(rev)) {
		t.Errorf("revision label %q; want %s", got, rev)
	}
	var names []string
	for _, m := range im.Manifests {
		names = append(names, m.Annotations["io.containerd.image.name"])
	}
	app := chartAppVersion(t, root)
	if !strings.Contains(strings.Join(names, " "), "ghcr.io/isthmus-dev/isthmus:"+app) {
		t.Errorf("image names %v lack the chart's appVersion tag %s", names, app)
	}
}

func chartAppVersion(t *testing.T, root string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, "charts/isthmus/Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "appVersion:"); ok {
			return strings.Trim(strings.TrimSpace(v), `"`)
		}
	}
	t.Fatal("Chart.yaml has no appVersion")
	return ""
}
