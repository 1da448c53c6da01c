package freeport

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestTakeDrawsFromABlockNoOtherProcessHolds holds every block's lock but
// one, as other processes would (a lock taken through another open file
// conflicts with ours as another process's does), and checks that Take
// hands out ports of that block only, each once. The locks are in a
// directory of the test's own, so that processes running beside it keep
// theirs.
func TestTakeDrawsFromABlockNoOtherProcessHolds(t *testing.T) {
	dir := t.TempDir()
	lockDir = dir
	var mine []*os.File
	var firsts []int
	for b := range blocks {
		first := low + b*blockSize
		f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("%d-%d.lock", first, first+blockSize-1)), os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			t.Fatal(err)
		}
		mine = append(mine, f)
		firsts = append(firsts, first)
	}
	defer func() {
		for _, f := range mine {
			f.Close()
		}
	}()
	// Give one back: the only block Take can reserve.
	open := firsts[len(firsts)/2]
	mine[len(mine)/2].Close()
	mine = append(mine[:len(mine)/2], mine[len(mine)/2+1:]...)

	seen := map[int]bool{}
	for range 20 {
		port, err := Take()
		if err != nil {
			t.Fatal(err)
		}
		if port < open || port >= open+blockSize {
			t.Fatalf("port %d is outside the one block no one else holds, [%d, %d)", port, open, open+blockSize)
		}
		if seen[port] {
			t.Fatalf("port %d handed out twice in 20 takes", port)
		}
		seen[port] = true
	}
	// The block stays ours: no other process may lock it now.
	f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("%d-%d.lock", open, open+blockSize-1)), os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
		t.Fatal("the block Take drew from is not locked")
	}
}
