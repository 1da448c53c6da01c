package demo

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestFailures(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	boom := errors.New("timeout")
	samples := []sample{
		{at: at(0), served: "a"},
		{at: at(50), err: boom},
		{at: at(100), err: boom},
		{at: at(150), served: "b"},
		{at: at(200), err: boom},
	}
	tests := []struct {
		name          string
		from, to      time.Time
		failed, total int
	}{
		{"all", at(0), at(1000), 3, 5},
		{"from is inclusive, to exclusive", at(50), at(150), 2, 2},
		{"empty window", at(60), at(90), 0, 0},
		{"only successes", at(150), at(200), 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, n := failures(samples, tt.from, tt.to)
			if f != tt.failed || n != tt.total {
				t.Errorf("failures = %d of %d, want %d of %d", f, n, tt.failed, tt.total)
			}
		})
	}
}

func TestSummary(t *testing.T) {
	r := &Results{Steps: []Step{
		{Name: StepReach, Took: 23 * time.Millisecond, ServedBy: "a"},
		{Name: StepLocalDown, Took: 1352 * time.Millisecond, Failed: 3, Total: 11, ServedBy: "b"},
	}}
	var out bytes.Buffer
	r.Summary(&out)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "STEP") {
		t.Fatalf("summary:\n%s", out.String())
	}
	for i, want := range [][]string{{"reach from c", "23ms", "-", "a"}, {"a's pods down", "1.352s", "3/11", "b"}} {
		for _, w := range want {
			if !strings.Contains(lines[i+1], w) {
				t.Errorf("row %d %q lacks %q", i+1, lines[i+1], w)
			}
		}
	}
	if s, ok := r.Step(StepLocalDown); !ok || s.Failed != 3 {
		t.Errorf("Step(%q) = %+v, %v", StepLocalDown, s, ok)
	}
	if _, ok := r.Step(StepWithdrawn); ok {
		t.Errorf("Step(%q) found a step never run", StepWithdrawn)
	}
}
