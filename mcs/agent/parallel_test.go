package agent

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

func TestInParallel(t *testing.T) {
	var running, most, calls atomic.Int32
	boom := errors.New("boom")
	items := make([]int, 3*sliceWriters)
	for i := range items {
		items[i] = i
	}
	err := inParallel(items, func(i int) error {
		calls.Add(1)
		n := running.Add(1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		time.Sleep(5 * time.Millisecond)
		running.Add(-1)
		if i == 7 {
			return boom
		}
		return nil
	})
	if !errors.Is(err, boom) {
		t.Errorf("inParallel returned %v, want the failing call's error", err)
	}
	if calls.Load() != int32(len(items)) {
		t.Errorf("%d calls for %d items: a failure must not leave the other writes undone", calls.Load(), len(items))
	}
	if most.Load() > sliceWriters || most.Load() < 2 {
		t.Errorf("at most %d calls ran at once, want 2..%d", most.Load(), sliceWriters)
	}
	if err := inParallel(nil, func(int) error { return boom }); err != nil {
		t.Errorf("no items: %v", err)
	}
}
