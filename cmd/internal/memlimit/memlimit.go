// Package memlimit resolves `--memory-limit`, the Go runtime's soft memory
// limit (runtime/debug.SetMemoryLimit), from a size or a share of the
// memory limit of the cgroup the process runs in.
//
// Without a limit the runtime lets the heap grow to twice what is live
// before it collects, and keeps what it grew to: `isthmus dns` holding
// 100,000 names sits near twice its index, and a container whose memory
// limit is below that is killed although its live data fits. With the
// limit set below the container's, the collector runs harder as the heap
// nears it instead. The resolver's answer path allocates nothing, so the
// extra collections cost CPU only while indexes are rebuilt.
package memlimit

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/api/resource"
)

// Default is 90% of the container's memory limit: the rest is for what
// the runtime does not count (the binary's pages, thread stacks outside
// the heap) and for the limit being soft.
const Default = "90%"

// Resolve reads a --memory-limit value: "0" or "" for no limit, "N%" for
// N percent of the cgroup's limit (none when the cgroup has none), or a
// size as Kubernetes writes it ("300Mi", "1G", bytes). cgroupLimit
// reports the cgroup's limit in bytes and whether there is one. It
// returns the limit in bytes, 0 for none, and where it came from.
func Resolve(value string, cgroupLimit func() (int64, bool)) (int64, string, error) {
	value = strings.TrimSpace(value)
	if value == "" || value == "0" {
		return 0, "none", nil
	}
	if pct, ok := strings.CutSuffix(value, "%"); ok {
		p, err := strconv.ParseFloat(pct, 64)
		if err != nil || p <= 0 || p > 100 {
			return 0, "", fmt.Errorf("%q: a share of the container's memory limit is 1-100%%", value)
		}
		limit, ok := cgroupLimit()
		if !ok {
			return 0, "none (the process's cgroup has no memory limit)", nil
		}
		return int64(float64(limit) * p / 100), fmt.Sprintf("%s of the cgroup's %d bytes", value, limit), nil
	}
	q, err := resource.ParseQuantity(value)
	if err != nil || q.Sign() <= 0 {
		return 0, "", fmt.Errorf("%q: want a size such as 300Mi, a share such as 90%%, or 0", value)
	}
	return q.Value(), "flag", nil
}

// unlimited is at or above what cgroup v1 reports for "no limit" (the
// largest page-aligned int64).
const unlimited = int64(1) << 62

// CgroupLimit returns the memory limit of the cgroup this process runs in,
// read from the filesystem under root ("/" on a host or in a container):
// cgroup v2's memory.max, else v1's memory.limit_in_bytes.
func CgroupLimit(root string) (int64, bool) {
	self, err := os.ReadFile(filepath.Join(root, "proc/self/cgroup"))
	if err != nil {
		return 0, false
	}
	sc := bufio.NewScanner(bytes.NewReader(self))
	for sc.Scan() {
		// hierarchy-ID:controllers:path; v2 is "0::/path".
		f := strings.SplitN(sc.Text(), ":", 3)
		if len(f) != 3 {
			continue
		}
		var dir, name string
		switch {
		case f[0] == "0" && f[1] == "":
			dir, name = filepath.Join(root, "sys/fs/cgroup"), "memory.max"
		case hasController(f[1], "memory"):
			dir, name = filepath.Join(root, "sys/fs/cgroup/memory"), "memory.limit_in_bytes"
		default:
			continue
		}
		// The process's own cgroup; in a container without a cgroup
		// namespace that path is the host's, and the container's cgroup
		// is mounted at the root instead.
		for _, file := range []string{filepath.Join(dir, f[2], name), filepath.Join(dir, name)} {
			if n, ok := readLimit(file); ok {
				return n, true
			}
		}
	}
	return 0, false
}

func hasController(list, c string) bool {
	for _, x := range strings.Split(list, ",") {
		if x == c {
			return true
		}
	}
	return false
}

func readLimit(file string) (int64, bool) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, false
	}
	s := strings.TrimSpace(string(b))
	if s == "max" {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n >= unlimited {
		return 0, false
	}
	return n, true
}
