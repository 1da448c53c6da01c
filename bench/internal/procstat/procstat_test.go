package procstat

import (
	"os"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		line    string
		name    string
		cpu     time.Duration
		wantErr bool
	}{
		{"1234 (kube-apiserver) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 12 0 500 1 1\n", "kube-apiserver", 2870 * time.Millisecond, false},
		// A name may hold spaces and parentheses.
		{"7 (a (b) c) R 1 7 7 0 -1 0 0 0 0 0 3 4 0 0 20 0 1 0 5 1 1\n", "a (b) c", 70 * time.Millisecond, false},
		{"7 (short) R 1 7\n", "", 0, true},
		{"7 no name here\n", "", 0, true},
		{"7 (x) R 1 7 7 0 -1 0 0 0 0 0 many 4 0 0\n", "", 0, true},
	} {
		name, cpu, err := parse([]byte(tc.line))
		if (err != nil) != tc.wantErr || name != tc.name || cpu != tc.cpu {
			t.Errorf("parse(%q) = %q, %v, %v; want %q, %v, error %v", tc.line, name, cpu, err, tc.name, tc.cpu, tc.wantErr)
		}
	}
}

// TestProcess reads this test's own process, which has used some CPU.
func TestProcess(t *testing.T) {
	for Self() < 20*time.Millisecond {
	}
	name, cpu, err := Process(os.Getpid())
	if err != nil || name == "" || cpu <= 0 {
		t.Errorf("Process(self) = %q, %v, %v; want its name and some CPU", name, cpu, err)
	}
	if _, _, err := Process(-1); err == nil {
		t.Error("Process(-1) read a process")
	}
}
