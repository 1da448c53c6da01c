package cluster

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cgroupMount is where the host's cgroup hierarchies are mounted.
const cgroupMount = "/sys/fs/cgroup"

// cgroupHierarchies lists the mounted cgroup hierarchies: on a cgroup v1
// host one directory per controller (cpu, memory, pids, ...) and the v2
// "unified" one; symlinks to a shared hierarchy (cpu,cpuacct) are skipped.
func cgroupHierarchies() ([]string, error) {
	entries, err := os.ReadDir(cgroupMount)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if e.Type()&fs.ModeSymlink != 0 || !e.IsDir() {
			continue
		}
		out = append(out, filepath.Join(cgroupMount, e.Name()))
	}
	return out, nil
}

// makeCgroup creates the cgroup path (e.g. "/isthmus-cluster-1-member1/
// runtime") in every hierarchy, copying cpuset.cpus and cpuset.mems down
// from the parent: a v1 cpuset cgroup without them takes no process.
func makeCgroup(path string) error {
	hs, err := cgroupHierarchies()
	if err != nil {
		return err
	}
	for _, h := range hs {
		parts := strings.Split(strings.Trim(path, "/"), "/")
		dir := h
		for _, part := range parts {
			parent := dir
			dir = filepath.Join(dir, part)
			if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("making cgroup %s: %w", dir, err)
			}
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				v, err := os.ReadFile(filepath.Join(parent, f))
				if err != nil {
					continue // not the cpuset hierarchy
				}
				if err := os.WriteFile(filepath.Join(dir, f), v, 0o644); err != nil {
					return fmt.Errorf("copying %s into %s: %w", f, dir, err)
				}
			}
		}
	}
	return nil
}

// joinCgroup moves pid into the cgroup path of every hierarchy.
func joinCgroup(path string, pid int) error {
	hs, err := cgroupHierarchies()
	if err != nil {
		return err
	}
	for _, h := range hs {
		f := filepath.Join(h, path, "cgroup.procs")
		if err := os.WriteFile(f, []byte(strconv.Itoa(pid)), 0o644); err != nil {
			return fmt.Errorf("moving %d into %s: %w", pid, f, err)
		}
	}
	return nil
}

// cgroupPIDs returns every process in the cgroup root or below it, in any
// hierarchy.
func cgroupPIDs(root string) []int {
	hs, _ := cgroupHierarchies()
	seen := map[int]bool{}
	for _, h := range hs {
		_ = filepath.WalkDir(filepath.Join(h, root), func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			data, _ := os.ReadFile(filepath.Join(p, "cgroup.procs"))
			for _, f := range strings.Fields(string(data)) {
				if pid, err := strconv.Atoi(f); err == nil {
					seen[pid] = true
				}
			}
			return nil
		})
	}
	pids := make([]int, 0, len(seen))
	for pid := range seen {
		pids = append(pids, pid)
	}
	slices.Sort(pids)
	return pids
}

// killUntilGone SIGKILLs the processes list names until it names none,
// and returns those it still names once deadline has passed.
func killUntilGone(list func() []int, deadline time.Time) []int {
	for {
		pids := list()
		if len(pids) == 0 || time.Now().After(deadline) {
			return pids
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// removeCgroupTree kills every process left in the cgroup root or below it
// (a node's containerd shims and containers, which outlive their parents),
// waits for the cgroups to empty, and removes them depth-first in every
// hierarchy. It is a no-op for a root that does not exist.
func removeCgroupTree(root string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	if pids := killUntilGone(func() []int { return cgroupPIDs(root) }, deadline); len(pids) > 0 {
		return fmt.Errorf("cgroup %s: processes %v survive SIGKILL", root, pids)
	}
	hs, _ := cgroupHierarchies()
	var errs []error
	for _, h := range hs {
		var dirs []string
		_ = filepath.WalkDir(filepath.Join(h, root), func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		// Deepest first: a cgroup with children cannot be removed.
		slices.SortFunc(dirs, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
		for _, d := range dirs {
			// A cgroup whose last task just exited can refuse removal
			// briefly (EBUSY) while the kernel finishes with it.
			for {
				err := syscall.Rmdir(d)
				if err == nil || errors.Is(err, syscall.ENOENT) {
					break
				}
				if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
					errs = append(errs, fmt.Errorf("removing cgroup %s: %w", d, err))
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
	return errors.Join(errs...)
}

// MemoryMiB is the resident memory of the whole clusterset: every process
// the harness runs (etcd, apiservers, controllers) plus, for real nodes,
// the anonymous memory of each node's cgroup tree (containerd, the
// kubelet, kube-proxy and every pod), page cache left out.
func (cs *Clusterset) MemoryMiB() int {
	total := 0
	for _, pid := range cs.PIDs() {
		total += statusKB(pid, "VmRSS:")
	}
	for _, c := range cs.Members {
		if c.node == nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join(cgroupMount, "memory", c.node.cgroup, "memory.stat"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			if rest, ok := strings.CutPrefix(line, "total_rss "); ok {
				b, _ := strconv.Atoi(rest)
				total += b / 1024
			}
		}
	}
	return total / 1024
}

// statusKB reads a kB field of /proc/PID/status, 0 when the process is
// gone.
func statusKB(pid int, field string) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")))
			return kb
		}
	}
	return 0
}
