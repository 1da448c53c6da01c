package layout

import (
	"encoding/json"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/isthmus-dev/isthmus"

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func TestTopLevel(t *testing.T) {
	want := []string{"Makefile", "README.md", "bench", "charts", "cmd", "dnsserver", "go.mod", "go.sum", "mcs", "test", "tunnel", "xds"}
	allowedExtra := []string{"docs"}
	out, err := exec.Command("git", "-C", repoRoot(t), "ls-files").Output()
	if err != nil {
		t.Fatalf("git ls-files: %v", err)
	}
	seen := map[string]bool{}
	for _, f := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		top, _, _ := strings.Cut(f, "/")
		if strings.HasPrefix(top, ".") {
			continue
		}
		seen[top] = true
	}
	for _, w := range want {
		if !seen[w] {
			t.Errorf("top level lacks %s", w)
		}
		delete(seen, w)
	}
	for extra := range seen {
		if !slices.Contains(allowedExtra, extra) {
			t.Errorf("unexpected top-level entry %s", extra)
		}
	}
}

type pkg struct {
	ImportPath string
	Dir        string
	GoFiles    []string
	Imports    []string
	Name       string
}

func listPackages(t *testing.T) []pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-json", "./...")
	cmd.Dir = repoRoot(t)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

// TestPackageDocs checks that every package says what it is for.
func TestPackageDocs(t *testing.T) {
	for _, p := range listPackages(t) {
		// code-generator writes its own package comments; `make generate`
		// owns these packages and lint fails when they are stale.
		if strings.HasPrefix(p.ImportPath, module+"/mcs/api/broker/generated/") {
			continue
		}
		documented := false
		for _, f := range p.GoFiles {
			file, err := parser.ParseFile(token.NewFileSet(), filepath.Join(p.Dir, f), nil, parser.PackageClauseOnly|parser.ParseComments)
			if err != nil {
				t.Fatal(err)
			}
			if file.Doc != nil && strings.HasPrefix(file.Doc.Text(), "Package "+p.Name+" ") ||
				file.Doc != nil && p.Name == "main" && strings.HasPrefix(file.Doc.Text(), "Command ") {
				documented = true
			}
		}
		if !documented {
			t.Errorf("%s has no package doc (\"// Package %s ...\")", p.ImportPath, p.Name)
		}
	}
}

// component is the top-level folder a package belongs to, with mcs/api
// and mcs/election (shared by the agent and the tunnel) apart from the mcs
// controllers.
func component(importPath string) string {
	rel := strings.TrimPrefix(strings.TrimPrefix(importPath, module), "/")
	for _, shared := range []string{"mcs/api", "mcs/election"} {
		if rel == shared || strings.HasPrefix(rel, shared+"/") {
			return shared
		}
	}
	top, _, _ := strings.Cut(rel, "/")
	return top
}

// TestDependenciesPointDownward checks docs/architecture.md's rule: cmd
// may use everything; a component (mcs, xds, dnsserver, tunnel) may use
// only itself and mcs/api, and the agent and the tunnel also the shared
// leader election (mcs/election, which uses only mcs/api); mcs/api uses
// nothing of ours; the test harness uses no component; nothing imports cmd
// or test code from product code.
func TestDependenciesPointDownward(t *testing.T) {
	allowed := map[string][]string{
		"cmd":          {"cmd", "mcs", "mcs/election", "xds", "dnsserver", "tunnel", "mcs/api"},
		"mcs":          {"mcs", "mcs/election", "mcs/api"},
		"mcs/election": {"mcs/election", "mcs/api"},
		"xds":          {"xds", "mcs/api"},
		"dnsserver":    {"dnsserver", "mcs/api"},
		"tunnel":       {"tunnel", "mcs/election", "mcs/api"},
		"mcs/api":      {"mcs/api"},
		"bench":        {"bench", "test", "mcs", "xds", "mcs/api"},
		"test":         {"test", "mcs/api"},
		// charts holds the Helm charts and their tests; the broker chart's
		// templates are made from mcs/setup's objects.
		"charts": {"charts", "test", "mcs", "mcs/election", "mcs/api"},
	}
	for _, p := range listPackages(t) {
		from := component(p.ImportPath)
		ok, known := allowed[from]
		if !known {
			t.Errorf("%s is in no known component", p.ImportPath)
			continue
		}
		for _, imp := range p.Imports {
			if imp != module && !strings.HasPrefix(imp, module+"/") {
				continue
			}
			if to := component(imp); !slices.Contains(ok, to) {
				t.Errorf("%s (%s) imports %s (%s): dependencies must point downward", p.ImportPath, from, imp, to)
			}
		}
	}
}

// TestProductCodeImportsNoTestHelpers: the test harness (test/...) is for
// tests; a product binary that linked it would carry apiserver launchers
// and fixtures.
func TestProductCodeImportsNoTestHelpers(t *testing.T) {
	for _, p := range listPackages(t) {
		if !slices.Contains([]string{"cmd", "mcs", "mcs/election", "mcs/api", "xds", "dnsserver", "tunnel"}, component(p.ImportPath)) {
			continue
		}
		for _, imp := range p.Imports {
			if imp == module+"/test" || strings.HasPrefix(imp, module+"/test/") {
				t.Errorf("%s imports the test helper %s outside its tests", p.ImportPath, imp)
			}
		}
	}
}

// TestBrokerAPIImportsNothingOfOurs: the broker API package is the
// contract every member and the CLI read; it depends on nothing of ours,
// so that no change elsewhere can change the contract.
func TestBrokerAPIImportsNothingOfOurs(t *testing.T) {
	const api = module + "/mcs/api/broker/v1alpha1"
	found := false
	for _, p := range listPackages(t) {
		if p.ImportPath != api {
			continue
		}
		found = true
		for _, imp := range p.Imports {
			if imp == module || strings.HasPrefix(imp, module+"/") {
				t.Errorf("%s imports %s", api, imp)
			}
		}
	}
	if !found {
		t.Errorf("%s not found", api)
	}
}

// TestFileLength keeps files readable in one sitting.
func TestFileLength(t *testing.T) {
	for _, p := range listPackages(t) {
		for _, f := range p.GoFiles {
			data, err := os.ReadFile(filepath.Join(p.Dir, f))
			if err != nil {
				t.Fatal(err)
			}
			if n := strings.Count(string(data), "\n"); n > 800 && !strings.HasPrefix(f, "zz_generated") {
				t.Errorf("%s/%s has %d lines; split it past 800", p.ImportPath, f, n)
			}
		}
	}
}
