package main

import (
	"archive/tar"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestHostFiles: a command comes with every symlink on its way as a
// symlink (so /bin/sh is still dash's link, awk still reaches mawk through
// /etc/alternatives), its regular file, and the libraries and loader ldd
// lists, each library reachable under the path ldd printed.
func TestHostFiles(t *testing.T) {
	files, err := hostFiles([]string{"/bin/sh", "awk", "grep"})
	if err != nil {
		t.Fatal(err)
	}
	// resolve follows p through files as the kernel would in the image.
	resolve := func(p string) (entry, string) {
		for range 40 {
			parts := strings.Split(strings.TrimPrefix(filepath.Clean(p), "/"), "/")
			moved := false
			for i := range parts {
				name := strings.Join(parts[:i+1], "/")
				e, ok := files[name]
				if !ok {
					return entry{}, name
				}
				if e.typ == tar.TypeSymlink {
					target := e.link
					if !filepath.IsAbs(target) {
						target = filepath.Join("/", filepath.Dir(name), target)
					}
					p, moved = filepath.Join(target, strings.Join(parts[i+1:], "/")), true
					break
				}
				if i == len(parts)-1 {
					return e, name
				}
			}
			if !moved {
				break
			}
		}
		return entry{}, p
	}
	for _, p := range []string{"/bin/sh", "/usr/bin/awk", "/usr/bin/grep"} {
		host, err := filepath.EvalSymlinks(p)
		if err != nil {
			t.Fatal(err)
		}
		e, name := resolve(p)
		if e.typ != tar.TypeReg || e.from != host {
			t.Errorf("%s resolves to %s (%+v) in the image, want the host's %s", p, name, e, host)
		}
		if e.mode&0o111 == 0 {
			t.Errorf("%s is not executable: %o", p, e.mode)
		}
		libs, err := ldd(host)
		if err != nil || len(libs) == 0 {
			t.Fatalf("ldd %s: %v %v", host, libs, err)
		}
		for _, l := range libs {
			if e, name := resolve(l); e.typ != tar.TypeReg {
				t.Errorf("library %s of %s is missing from the image (stopped at %s)", l, p, name)
			}
		}
	}
	if fi, err := os.Lstat("/bin"); err == nil && fi.Mode()&os.ModeSymlink != 0 && files["bin"].typ != tar.TypeSymlink {
		t.Errorf("/bin is a symlink here but %+v in the image", files["bin"])
	}
	if files["tmp"].mode != 0o1777 || files["etc/nsswitch.conf"].data == nil {
		t.Errorf("tmp %o, nsswitch.conf %q", files["tmp"].mode, files["etc/nsswitch.conf"].data)
	}
	if _, err := hostFiles([]string{"no-such-command-here"}); err == nil {
		t.Error("a missing command was not reported")
	}
}
