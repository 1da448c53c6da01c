package main

// The images mcs-api's conformance suite names in its pods, built from this
// machine's Debian binaries, since no registry can be reached: the suite's
// `hello` pods run alpine/socat, its `request` pod nicolaka/netshoot. Each
// tool is copied from the host with every symlink on its way (so /bin/sh
// stays a link to dash and /usr/bin/awk to mawk through
// /etc/alternatives) and the shared libraries ldd lists for it. The suite
// only runs the tools and parses their output, so the images carry those
// tools and nothing else; test/conformance runs each one from the unpacked
// archive and checks it behaves as the suite expects.

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// suiteImage is one image the suite names: its reference as containerd
// stores it (the kubelet asks for alpine/socat:1.7.4.4, which containerd
// reads as docker.io/alpine/socat:1.7.4.4) and the host commands it holds.
type suiteImage struct {
	Ref      string
	Commands []string
	Config   v1.Config
}

var suiteEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

// suiteImages: the tools each of the suite's containers calls, and sleep
// and cat besides (the request pod's loop sleeps). The entrypoints are
// upstream's: socat for alpine/socat, a shell for netshoot.
var suiteImages = []suiteImage{
	{
		// hello: `/bin/sh -c` a listener script that reads the pod's IPs
		// with echo, grep -E, tr and awk, then socat … SYSTEM:'echo …'.
		Ref:      "docker.io/alpine/socat:1.7.4.4",
		Commands: []string{"/bin/sh", "socat", "echo", "grep", "tr", "awk", "sleep", "cat"},
		Config:   v1.Config{Entrypoint: []string{"socat"}, Env: suiteEnv},
	},
	{
		// request: nslookup (BIND's: the suite parses its output), nc -v
		// -w N -4/-6 (OpenBSD's) and the grep, awk, tail pipeline around
		// them; dig for people debugging a run.
		Ref:      "docker.io/nicolaka/netshoot:v0.15",
		Commands: []string{"/bin/sh", "nslookup", "dig", "nc", "grep", "awk", "tail", "tr", "echo", "sleep", "cat"},
		Config:   v1.Config{Cmd: []string{"sh"}, Env: suiteEnv},
	},
}

// suiteImagesMain is `image suite-images -out FILE`: both images in one
// OCI layout archive, for `ctr -n k8s.io images import`.
func suiteImagesMain(args []string) error {
	fs := flag.NewFlagSet("suite-images", flag.ContinueOnError)
	out := fs.String("out", "", "the OCI layout archive to write")
	created := fs.String("created", "2026-01-01T00:00:00Z", "RFC 3339 time of every timestamp in the images")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" {
		return fmt.Errorf("suite-images: need -out")
	}
	at, err := time.Parse(time.RFC3339, *created)
	if err != nil {
		return fmt.Errorf("-created: %w", err)
	}
	start := time.Now()
	if err := writeSuiteImages(*out, at.UTC()); err != nil {
		return err
	}
	var refs []string
	for _, s := range suiteImages {
		refs = append(refs, s.Ref)
	}
	fmt.Printf("wrote %s: %s in %.1f s\n", *out, strings.Join(refs, ", "), time.Since(start).Seconds())
	return nil
}

// writeSuiteImages writes every suite image, for this machine's platform,
// into one OCI layout archive at out.
func writeSuiteImages(out string, at time.Time) error {
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	dir, err := os.MkdirTemp(filepath.Dir(out), ".suite-images-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	platform := v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
	for _, s := range suiteImages {
		fsys, err := hostFiles(s.Commands)
		if err != nil {
			return fmt.Errorf("%s: %w", s.Ref, err)
		}
		img, err := suiteImageOf(s, fsys, at, platform)
		if err != nil {
			return fmt.Errorf("%s: %w", s.Ref, err)
		}
		// An index of one platform, as make image writes: what ctr,
		// skopeo and crane import alike.
		idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
			mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &platform}})
		if err := lp.AppendIndex(idx, layout.WithAnnotations(map[string]string{
			"io.containerd.image.name":          s.Ref,
			"org.opencontainers.image.ref.name": s.Ref,
		})); err != nil {
			return err
		}
	}
	return tarDir(dir, out, at)
}

func suiteImageOf(s suiteImage, fsys map[string]entry, at time.Time, platform v1.Platform) (v1.Image, error) {
	data, err := tarFiles(fsys, at)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{Layer: layer, MediaType: types.OCILayer,
		History: v1.History{Created: v1.Time{Time: at}, CreatedBy: "isthmus test/image suite-images",
			Comment: "Debian's " + strings.Join(s.Commands, ", ") + " and their libraries"}})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Created, cf.Config = platform.OS, platform.Architecture, v1.Time{Time: at}, s.Config
	return mutate.ConfigFile(img, cf)
}

// entry is one file of an image's tree: a directory, a symlink to link,
// or a regular file with data or, until tarFiles reads it, the host file
// from.
type entry struct {
	typ  byte
	mode int64
	link string
	from string
	data []byte
}

// hostFiles is the file tree of commands: each command (a path, or a name
// looked up in PATH), the libraries ldd lists for it, and every directory
// and symlink on the way to them, keyed by their path without the leading
// slash; and a few files of /etc the tools read.
func hostFiles(commands []string) (map[string]entry, error) {
	files := map[string]entry{
		"etc":               {typ: tar.TypeDir, mode: 0o755},
		"etc/passwd":        {typ: tar.TypeReg, mode: 0o644, data: []byte("root:x:0:0:root:/root:/bin/sh\n")},
		"etc/group":         {typ: tar.TypeReg, mode: 0o644, data: []byte("root:x:0:\n")},
		"etc/nsswitch.conf": {typ: tar.TypeReg, mode: 0o644, data: []byte("hosts: files dns\n")},
		"root":              {typ: tar.TypeDir, mode: 0o700},
		"tmp":               {typ: tar.TypeDir, mode: 0o1777},
	}
	for _, c := range commands {
		p, err := exec.LookPath(c)
		if err != nil {
			return nil, err
		}
		if !filepath.IsAbs(p) {
			return nil, fmt.Errorf("%s found at %s, not an absolute path", c, p)
		}
		if err := copyPath(files, p); err != nil {
			return nil, err
		}
		libs, err := ldd(p)
		if err != nil {
			return nil, err
		}
		for _, l := range libs {
			if err := copyPath(files, l); err != nil {
				return nil, err
			}
		}
	}
	return files, nil
}

// copyPath adds p to files as the host has it: each directory on the way,
// each symlink as a symlink (then its target, followed the same way), and
// the regular file at the end.
func copyPath(files map[string]entry, p string) error {
	for hops := 0; hops < 40; hops++ {
		parts := strings.Split(strings.TrimPrefix(path.Clean(p), "/"), "/")
		followed := false
		for i := range parts {
			name := strings.Join(parts[:i+1], "/")
			fi, err := os.Lstat("/" + name)
			if err != nil {
				return err
			}
			switch {
			case fi.Mode()&os.ModeSymlink != 0:
				target, err := os.Readlink("/" + name)
				if err != nil {
					return err
				}
				files[name] = entry{typ: tar.TypeSymlink, mode: 0o777, link: target}
				if !path.IsAbs(target) {
					target = path.Join("/", path.Dir(name), target)
				}
				p = path.Join(target, strings.Join(parts[i+1:], "/"))
				followed = true
			case fi.IsDir():
				files[name] = entry{typ: tar.TypeDir, mode: int64(fi.Mode().Perm())}
				continue
			case fi.Mode().IsRegular() && i == len(parts)-1:
				files[name] = entry{typ: tar.TypeReg, mode: int64(fi.Mode().Perm()), from: "/" + name}
				return nil
			default:
				return fmt.Errorf("%s: neither a directory, a symlink nor a regular file", "/"+name)
			}
			break
		}
		if !followed {
			return fmt.Errorf("%s: a directory, not a file", p)
		}
	}
	return fmt.Errorf("%s: too many symlinks", p)
}

// ldd lists the shared libraries the dynamic loader would load for
// binary, the loader itself included; none for a static binary.
func ldd(binary string) ([]string, error) {
	out, err := exec.Command("ldd", binary).CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "not a dynamic executable") {
			return nil, nil
		}
		return nil, fmt.Errorf("ldd %s: %w: %s", binary, err, out)
	}
	var libs []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		// "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)",
		// "/lib64/ld-linux-x86-64.so.2 (0x…)", "linux-vdso.so.1 (0x…)".
		line := strings.TrimSpace(sc.Text())
		if strings.Contains(line, "not found") {
			return nil, fmt.Errorf("ldd %s: %s", binary, line)
		}
		if _, after, ok := strings.Cut(line, "=> "); ok {
			line = after
		}
		if f := strings.Fields(line); len(f) > 0 && path.IsAbs(f[0]) {
			libs = append(libs, f[0])
		}
	}
	return libs, nil
}

// tarFiles is the gzipped layer of files: sorted, so every directory
// comes before what it holds, all owned by root and dated at.
func tarFiles(files map[string]entry, at time.Time) ([]byte, error) {
	var names []string
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, n := range names {
		e := files[n]
		h := tar.Header{Typeflag: e.typ, Name: n, Mode: e.mode, Linkname: e.link, ModTime: at, Format: tar.FormatPAX}
		data := e.data
		switch e.typ {
		case tar.TypeDir:
			h.Name += "/"
		case tar.TypeReg:
			if e.from != "" {
				var err error
				if data, err = os.ReadFile(e.from); err != nil {
					return nil, err
				}
			}
			h.Size = int64(len(data))
		}
		if err := tw.WriteHeader(&h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := gz.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
