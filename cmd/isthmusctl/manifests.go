package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/isthmus-dev/isthmus/mcs/setup"
)

// defaultRootTTL is the lifetime of a clusterset root that broker install,
// or join on a broker without one, makes.
const defaultRootTTL = 10 * 365 * 24 * time.Hour

// dryRun is `join --dry-run`: the member-side objects as manifests for a
// GitOps tool, written to stdout or a directory, instead of applied.
type dryRun struct {
	enabled   bool
	output    string
	outputDir string
}

func (d *dryRun) register(fs *pflag.FlagSet) {
	fs.BoolVar(&d.enabled, "dry-run", false, "apply nothing to the member: print the manifests join would apply there (CRDs, ClusterProperty, namespace, the broker and CA Secrets) for a GitOps tool; the member's identity on the broker is still set up, since its token must exist there")
	fs.StringVarP(&d.output, "output", "o", "yaml", "with --dry-run: yaml (documents) or json (a v1 List)")
	fs.StringVar(&d.outputDir, "output-dir", "", "with --dry-run: write one file per manifest into this directory instead of stdout")
}

// join runs the dry run. What it did on the broker goes to stderr, so
// stdout holds only manifests.
func (d *dryRun) join(ctx context.Context, hub, member *setup.Clients, opts setup.JoinOptions, stdout, stderr io.Writer) error {
	if d.output != "yaml" && d.output != "json" {
		return fmt.Errorf("-o %q: want yaml or json", d.output)
	}
	id, objs, err := setup.JoinManifests(ctx, hub, member, opts, stderr)
	if err != nil {
		return fmt.Errorf("joining %s to the broker at %s (dry run): %w", member.Config.Host, hub.Config.Host, err)
	}
	if d.outputDir != "" {
		if err := writeManifestDir(d.outputDir, d.output, objs); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "cluster %s: %d manifests written to %s; they hold the broker credential and the CA key, so keep them as secrets (sealed or in a secret store)\n", id, len(objs), d.outputDir)
		return nil
	}
	data, err := encodeManifests(d.output, objs)
	if err != nil {
		return err
	}
	_, err = stdout.Write(data)
	return err
}

// encodeManifests is objs as YAML documents, or as one JSON v1 List.
func encodeManifests(format string, objs []*unstructured.Unstructured) ([]byte, error) {
	if format == "json" {
		items := make([]any, len(objs))
		for i, o := range objs {
			items[i] = o.Object
		}
		data, err := json.MarshalIndent(map[string]any{"apiVersion": "v1", "kind": "List", "items": items}, "", "  ")
		return append(data, '\n'), err
	}
	var b strings.Builder
	for _, o := range objs {
		y, err := yaml.Marshal(o.Object)
		if err != nil {
			return nil, fmt.Errorf("encoding %s %s: %w", o.GetKind(), o.GetName(), err)
		}
		b.WriteString("---\n")
		b.Write(y)
	}
	return []byte(b.String()), nil
}

// writeManifestDir writes each object to its own file, numbered in apply
// order: NN-<kind>-<name>.<format>. Files are readable by the owner only.
func writeManifestDir(dir, format string, objs []*unstructured.Unstructured) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	var errs []error
	for i, o := range objs {
		data, err := encodeManifests("yaml", []*unstructured.Unstructured{o})
		if format == "json" {
			data, err = json.MarshalIndent(o.Object, "", "  ")
		}
		if err != nil {
			return err
		}
		name := fmt.Sprintf("%02d-%s-%s.%s", i, strings.ToLower(o.GetKind()), o.GetName(), format)
		errs = append(errs, os.WriteFile(filepath.Join(dir, name), data, 0o600))
	}
	return errors.Join(errs...)
}
