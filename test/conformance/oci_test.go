package conformance

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

// The archive is read with the standard library alone, as the OCI image
// layout specification describes it, so that the test does not share a
// reader with the builder: index.json names each image
// (io.containerd.image.name, what `ctr images import` reads), each an
// index with a manifest per platform, whose layers are unpacked in order.

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Annotations map[string]string `json:"annotations"`
	Platform    *struct {
		OS           string `json:"os"`
		Architecture string `json:"architecture"`
	} `json:"platform"`
}

type ociIndex struct {
	Manifests []descriptor `json:"manifests"`
}

type ociManifest struct {
	Config descriptor   `json:"config"`
	Layers []descriptor `json:"layers"`
}

// imageConfig is the part of an image's configuration the kubelet reads.
type imageConfig struct {
	Config struct {
		Entrypoint []string `json:"Entrypoint"`
		Cmd        []string `json:"Cmd"`
		Env        []string `json:"Env"`
	} `json:"config"`
}

// unpacked is one image of the archive: its root file system in Root.
type unpacked struct {
	Ref    string
	Root   string
	Config imageConfig
}

// unpackArchive unpacks every image of an OCI layout archive, for this
// machine's platform, into directories under dir.
func unpackArchive(archive, dir string) (map[string]*unpacked, error) {
	f, err := os.Open(archive)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	files := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if h.Typeflag == tar.TypeReg {
			if files[h.Name], err = io.ReadAll(tr); err != nil {
				return nil, err
			}
		}
	}
	blob := func(d descriptor, into any) ([]byte, error) {
		data, ok := files["blobs/"+strings.Replace(d.Digest, ":", "/", 1)]
		if !ok {
			return nil, fmt.Errorf("blob %s missing", d.Digest)
		}
		if into != nil {
			return data, json.Unmarshal(data, into)
		}
		return data, nil
	}
	var top ociIndex
	if err := json.Unmarshal(files["index.json"], &top); err != nil {
		return nil, fmt.Errorf("index.json: %w", err)
	}
	out := map[string]*unpacked{}
	for i, d := range top.Manifests {
		u := &unpacked{Ref: d.Annotations["io.containerd.image.name"], Root: filepath.Join(dir, fmt.Sprint(i))}
		var idx ociIndex
		if _, err := blob(d, &idx); err != nil {
			return nil, fmt.Errorf("%s: %w", u.Ref, err)
		}
		var m ociManifest
		for _, md := range idx.Manifests {
			if md.Platform != nil && md.Platform.OS == "linux" && md.Platform.Architecture == runtime.GOARCH {
				if _, err := blob(md, &m); err != nil {
					return nil, fmt.Errorf("%s: %w", u.Ref, err)
				}
			}
		}
		if len(m.Layers) == 0 {
			return nil, fmt.Errorf("%s: no linux/%s manifest with layers", u.Ref, runtime.GOARCH)
		}
		if _, err := blob(m.Config, &u.Config); err != nil {
			return nil, fmt.Errorf("%s config: %w", u.Ref, err)
		}
		for _, l := range m.Layers {
			data, err := blob(l, nil)
			if err != nil {
				return nil, err
			}
			if err := untarGzip(data, u.Root); err != nil {
				return nil, fmt.Errorf("%s layer %s: %w", u.Ref, l.Digest, err)
			}
		}
		out[u.Ref] = u
	}
	return out, nil
}

// untarGzip unpacks a gzipped layer into root: directories, regular
// files and symlinks (all our layers hold), owned by whoever runs it.
func untarGzip(data []byte, root string) error {
	gz, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		return err
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	tr := tar.NewReader(gz)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		name := filepath.Clean(h.Name)
		if !filepath.IsLocal(name) {
			return fmt.Errorf("entry %q leaves the root", h.Name)
		}
		dst := filepath.Join(root, name)
		switch h.Typeflag {
		case tar.TypeDir:
			if err = os.MkdirAll(dst, 0o755); err == nil {
				err = os.Chmod(dst, fileMode(h.Mode))
			}
		case tar.TypeSymlink:
			err = os.Symlink(h.Linkname, dst)
		case tar.TypeReg:
			var data []byte
			if data, err = io.ReadAll(tr); err == nil {
				err = os.WriteFile(dst, data, fileMode(h.Mode))
			}
		default:
			err = fmt.Errorf("entry %q of type %c", h.Name, h.Typeflag)
		}
		if err != nil {
			return err
		}
	}
}

// fileMode turns a tar mode (permissions and the sticky bit, as tmp has)
// into Go's.
func fileMode(m int64) os.FileMode {
	mode := os.FileMode(m).Perm()
	if m&0o1000 != 0 {
		mode |= os.ModeSticky
	}
	return mode
}
