// Command nodeimages builds the images test/cluster's real nodes import
// with `ctr images import` at start, from this module's own commands, for
// the host's architecture: no registry, no Dockerfile.
//
//	registry.k8s.io/pause:3.10   pause: the pod sandbox containerd is configured with
//	isthmus.test/testserver:v1   testserver: the workload of the real-node tests
//
// Each is one layer on an empty base (the static binary and the empty
// directories a runtime mounts over), written as a docker-archive tarball,
// DIR/<name>.tar, which ctr names from its RepoTag. -add wraps a static
// binary built elsewhere the same way (the tests' CoreDNS, from the
// dnsserver/coredns module), as DIR/<binary's name>.tar, run as 65532.
//
//	go run ./nodeimages -out DIR [-add REF=BINARY ...]
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// nodeImage is one image: the command of this module it wraps, its name,
// and the user it runs as (the pause image's 65535, as upstream's).
type nodeImage struct {
	file, pkg, ref string
	uid            int
	ports          []string
}

var images = []nodeImage{
	{file: "pause", pkg: "./pause", ref: "registry.k8s.io/pause:3.10", uid: 65535},
	{file: "testserver", pkg: "./testserver", ref: "isthmus.test/testserver:v1", uid: 65532, ports: []string{"8080/tcp"}},
}

// created is every timestamp in the images: fixed, so a rebuild of the
// same sources gives the same image ids.
var created = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

type adds []string

func (a *adds) String() string     { return strings.Join(*a, ",") }
func (a *adds) Set(s string) error { *a = append(*a, s); return nil }

func main() {
	out := flag.String("out", "", "directory to write <image>.tar into")
	var extra adds
	flag.Var(&extra, "add", "REF=BINARY: also wrap this static binary as image REF (repeat)")
	flag.Parse()
	if *out == "" {
		fmt.Fprintln(os.Stderr, "nodeimages: need -out DIR")
		os.Exit(2)
	}
	if err := run(*out, extra); err != nil {
		fmt.Fprintln(os.Stderr, "nodeimages:", err)
		os.Exit(1)
	}
}

func run(out string, extra []string) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	work, err := os.MkdirTemp(out, ".build-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	for _, im := range images {
		bin := filepath.Join(work, im.file)
		build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, im.pkg)
		build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
		if msg, err := build.CombinedOutput(); err != nil {
			return fmt.Errorf("building %s: %w\n%s", im.pkg, err, msg)
		}
		if err := write(out, im, bin); err != nil {
			return err
		}
	}
	for _, e := range extra {
		ref, bin, ok := strings.Cut(e, "=")
		if !ok {
			return fmt.Errorf("-add %q: want REF=BINARY", e)
		}
		if err := write(out, nodeImage{file: filepath.Base(bin), ref: ref, uid: 65532}, bin); err != nil {
			return err
		}
	}
	return nil
}

// write wraps the binary as im and writes out/<file>.tar.
func write(out string, im nodeImage, bin string) error {
	data, err := os.ReadFile(bin)
	if err != nil {
		return err
	}
	img, err := assemble(im, data)
	if err != nil {
		return fmt.Errorf("%s: %w", im.ref, err)
	}
	tag, err := name.NewTag(im.ref)
	if err != nil {
		return err
	}
	path := filepath.Join(out, im.file+".tar")
	if err := tarball.WriteToFile(path+".tmp", tag, img); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return os.Rename(path+".tmp", path)
}

// assemble makes the image: the binary at /<file> as its entrypoint.
func assemble(im nodeImage, binary []byte) (v1.Image, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range []string{"dev", "etc", "proc", "sys", "tmp", "var", "var/run"} {
		mode := int64(0o755)
		if d == "tmp" {
			mode = 0o1777
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: mode, ModTime: created}); err != nil {
			return nil, err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: im.file, Mode: 0o755, Size: int64(len(binary)), ModTime: created}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(binary); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	layerBytes := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerBytes)), nil
	})
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Created = "linux", runtime.GOARCH, v1.Time{Time: created}
	cf.Config = v1.Config{
		Entrypoint:   []string{"/" + im.file},
		User:         fmt.Sprintf("%d:%d", im.uid, im.uid),
		Env:          []string{"PATH=/"},
		ExposedPorts: map[string]struct{}{},
	}
	for _, p := range im.ports {
		cf.Config.ExposedPorts[p] = struct{}{}
	}
	return mutate.ConfigFile(img, cf)
}
