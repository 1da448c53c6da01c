package memlimit

import (
	"os"
	"path/filepath"
	"testing"
)

func TestResolve(t *testing.T) {
	limited := func() (int64, bool) { return 1 << 30, true }
	none := func() (int64, bool) { return 0, false }
	for _, tc := range []struct {
		value   string
		cgroup  func() (int64, bool)
		want    int64
		wantErr bool
	}{
		{"", limited, 0, false},
		{"0", limited, 0, false},
		{"90%", limited, 966367641, false},
		{"100%", limited, 1 << 30, false},
		{"90%", none, 0, false},
		{"300Mi", none, 300 << 20, false},
		{"1G", limited, 1e9, false},
		{"123456789", none, 123456789, false},
		{"0%", limited, 0, true},
		{"150%", limited, 0, true},
		{"x%", limited, 0, true},
		{"-1Mi", limited, 0, true},
		{"lots", limited, 0, true},
	} {
		got, from, err := Resolve(tc.value, tc.cgroup)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("Resolve(%q) = %d (%s), %v; want %d, error %v", tc.value, got, from, err, tc.want, tc.wantErr)
		}
	}
}

func TestCgroupLimit(t *testing.T) {
	for _, tc := range []struct {
		name   string
		files  map[string]string
		want   int64
		wantOK bool
	}{
		{"v2 in a cgroup namespace", map[string]string{
			"proc/self/cgroup": "0::/\n", "sys/fs/cgroup/memory.max": "268435456\n"}, 268435456, true},
		{"v2 unlimited", map[string]string{
			"proc/self/cgroup": "0::/\n", "sys/fs/cgroup/memory.max": "max\n"}, 0, false},
		{"v2 nested path", map[string]string{
			"proc/self/cgroup": "0::/kubepods/pod1/c1\n", "sys/fs/cgroup/kubepods/pod1/c1/memory.max": "536870912\n"}, 536870912, true},
		{"v1 host path, container mount at the root", map[string]string{
			"proc/self/cgroup":                           "12:cpu,cpuacct:/kubepods/x\n4:memory:/kubepods/pod1/c1\n",
			"sys/fs/cgroup/memory/memory.limit_in_bytes": "268435456\n"}, 268435456, true},
		{"v1 unlimited", map[string]string{
			"proc/self/cgroup":                           "4:memory:/\n",
			"sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n"}, 0, false},
		{"no cgroup files", map[string]string{"proc/self/cgroup": "4:memory:/\n"}, 0, false},
		{"no /proc", nil, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for name, body := range tc.files {
				p := filepath.Join(root, name)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if got, ok := CgroupLimit(root); got != tc.want || ok != tc.wantOK {
				t.Errorf("got %d, %v; want %d, %v", got, ok, tc.want, tc.wantOK)
			}
		})
	}
}
