// Command image writes the isthmus container image from binaries built
// from the tree: no Dockerfile, no daemon, no registry. The image is one
// layer on an empty base (the static binary, CA certificates, a non-root
// user), one manifest per platform under a single OCI image index, written
// as an OCI layout archive that `ctr images import`, `skopeo copy
// oci-archive:` and `crane push` read.
//
// The output depends only on its inputs: every timestamp is -created (the
// commit's time), files are written in a fixed order with fixed owners, so
// the same commit gives the same digest on every machine with the same
// toolchain and CA bundle.
//
//	image -bin linux/amd64=bin/linux_amd64/isthmus -bin linux/arm64=bin/linux_arm64/isthmus \
//	  -name ghcr.io/isthmus-dev/isthmus -tag 0.1.0 -created 2026-12-06T01:00:00Z \
//	  -label org.opencontainers.image.revision=<sha> -out bin/isthmus-image.tar
//
// `image suite-images -out FILE` writes instead the images mcs-api's
// conformance suite runs (alpine/socat and nicolaka/netshoot) from this
// machine's Debian binaries, for nodes that can reach no registry.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"time"
)

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(s string) error { *m = append(*m, s); return nil }

func main() {
	// `image suite-images`: the images mcs-api's conformance suite names
	// (suite.go).
	if len(os.Args) > 1 && os.Args[1] == "suite-images" {
		if err := suiteImagesMain(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "image:", err)
			os.Exit(1)
		}
		return
	}
	var bins, tags, labels multi
	flag.Var(&bins, "bin", "os/arch=path of a static isthmus binary (repeat per platform)")
	flag.Var(&tags, "tag", "a tag for the image (repeat)")
	flag.Var(&labels, "label", "key=value, an image label (repeat)")
	name := flag.String("name", "ghcr.io/isthmus-dev/isthmus", "the image's repository")
	created := flag.String("created", "", "RFC 3339 time of every timestamp in the image (the commit time)")
	cacerts := flag.String("cacerts", "/etc/ssl/certs/ca-certificates.crt", "the CA bundle to ship")
	out := flag.String("out", "", "the OCI layout archive to write")
	flag.Parse()
	if err := run(bins, tags, labels, *name, *created, *cacerts, *out); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run(bins, tags, labels []string, name, created, cacerts, out string) error {
	if len(bins) == 0 || len(tags) == 0 || out == "" || created == "" {
		return fmt.Errorf("need -bin, -tag, -created and -out (see the command's doc)")
	}
	at, err := time.Parse(time.RFC3339, created)
	if err != nil {
		return fmt.Errorf("-created: %w", err)
	}
	spec := Spec{Created: at.UTC(), Labels: map[string]string{}}
	for _, l := range labels {
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			return fmt.Errorf("-label %q: want key=value", l)
		}
		spec.Labels[k] = v
	}
	if spec.CACerts, err = os.ReadFile(cacerts); err != nil {
		return fmt.Errorf("reading the CA bundle (Debian's ca-certificates package): %w", err)
	}
	for _, b := range bins {
		platform, path, ok := strings.Cut(b, "=")
		osName, arch, ok2 := strings.Cut(platform, "/")
		if !ok || !ok2 {
			return fmt.Errorf("-bin %q: want os/arch=path", b)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		spec.Platforms = append(spec.Platforms, Platform{OS: osName, Arch: arch, Binary: data})
	}
	for _, t := range tags {
		spec.Refs = append(spec.Refs, name+":"+t)
	}
	start := time.Now()
	digest, err := Write(spec, out)
	if err != nil {
		return err
	}
	fmt.Printf("wrote %s: index %s (%d platforms, tags %s) in %.1f s\n", out, digest, len(spec.Platforms), strings.Join(tags, ", "), time.Since(start).Seconds())
	return nil
}
