// Package procstat reads the CPU time of processes for the benchmarks: a
// child's from /proc/<pid>/stat, this process's from getrusage.
package procstat

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// tick is Linux's USER_HZ, the unit of /proc/<pid>/stat's times.
const tick = 10 * time.Millisecond

// Process is the program name of pid and the user plus system CPU time
// it has used so far.
func Process(pid int) (name string, cpu time.Duration, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", 0, err
	}
	name, cpu, err = parse(b)
	if err != nil {
		return "", 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return name, cpu, nil
}

// parse reads a /proc/<pid>/stat line. The name (field 2) is in
// parentheses and may hold spaces and parentheses itself, so the fields
// after it start behind the last closing parenthesis; utime and stime
// are fields 14 and 15 of the line.
func parse(b []byte) (string, time.Duration, error) {
	open, closing := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || closing < open || closing+2 > len(b) {
		return "", 0, fmt.Errorf("no program name in %q", b)
	}
	f := strings.Fields(string(b[closing+2:]))
	if len(f) < 13 {
		return "", 0, fmt.Errorf("too few fields")
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return "", 0, err
		}
		ticks += n
	}
	return string(b[open+1 : closing]), time.Duration(ticks) * tick, nil
}

// Self is the user plus system CPU time this process has used so far.
func Self() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
