// Package helmtest runs the real helm binary for the charts' tests: it
// finds helm and decodes what `helm template` renders.
package helmtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

// Find returns $ISTHMUS_HELM, the repository's bin/helm (make helm builds
// it) or helm on PATH. Without one it fails the test in CI (CI or
// ISTHMUS_E2E set) and skips it elsewhere.
func Find(tb testing.TB, repoRoot string) string {
	tb.Helper()
	for _, p := range []string{os.Getenv("ISTHMUS_HELM"), filepath.Join(repoRoot, "bin", "helm")} {
		if p != "" {
			if _, err := os.Stat(p); err == nil {
				return p
			}
		}
	}
	if p, err := exec.LookPath("helm"); err == nil {
		return p
	}
	if os.Getenv("CI") != "" || os.Getenv("ISTHMUS_E2E") != "" {
		tb.Fatal("helm not found: make helm builds it into bin/")
	}
	tb.Skip("helm not found (make helm builds it); CI fails here instead")
	return ""
}

// Decode splits rendered manifests into objects, skipping empty documents.
func Decode(out []byte) ([]*unstructured.Unstructured, error) {
	var docs []*unstructured.Unstructured
	for _, doc := range strings.Split("\n"+string(out), "\n---") {
		var m map[string]any
		if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
			return nil, fmt.Errorf("decoding a rendered document: %w\n%s", err, doc)
		}
		if len(m) > 0 {
			docs = append(docs, &unstructured.Unstructured{Object: m})
		}
	}
	return docs, nil
}
