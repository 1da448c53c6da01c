package kube

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const kubeconfig = `apiVersion: v1
kind: Config
clusters:
- name: hub
  cluster: {server: "https://127.0.0.1:6443"}
- name: east
  cluster: {server: "https://127.0.0.2:6443"}
users:
- name: admin
  user: {token: abc}
contexts:
- name: hub
  context: {cluster: hub, user: admin}
- name: east
  context: {cluster: east, user: admin}
current-context: hub
`

func TestConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config")
	if err := os.WriteFile(path, []byte(kubeconfig), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path, context string
		wantHost      string
		wantErr       string
	}{
		{path, "", "https://127.0.0.1:6443", ""},
		{path, "east", "https://127.0.0.2:6443", ""},
		{path, "west", "", `context west`},
		{filepath.Join(t.TempDir(), "missing"), "", "", "missing"},
	}
	for _, tt := range tests {
		cfg, err := Config(tt.path, tt.context)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Config(%q, %q) error %v, want one containing %q", tt.path, tt.context, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("Config(%q, %q): %v", tt.path, tt.context, err)
			continue
		}
		if cfg.Host != tt.wantHost {
			t.Errorf("Config(%q, %q).Host = %q, want %q", tt.path, tt.context, cfg.Host, tt.wantHost)
		}
	}
}
