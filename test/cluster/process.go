package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// process is one child process of the harness: a binary, its arguments and
// its log file, which can be stopped and started again with the same
// arguments.
type process struct {
	name    string // e.g. "member1/kube-apiserver"
	bin     string
	args    []string
	logPath string
	reg     *pidRegistry
	// exe, if set, is the binary the process runs once started, when bin
	// only leads to it (nsenter): what the registry records for the sweep.
	exe string
	// beforeStart, if set, runs before each start (to fill in arguments
	// known only then); afterStart with the new PID (to move it into a
	// cgroup). An afterStart error kills the process.
	beforeStart func(*process)
	afterStart  func(pid int) error

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
	err  error         // cmd's exit error, valid after done
}

func (p *process) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return fmt.Errorf("%s: already running", p.name)
	}
	if p.beforeStart != nil {
		p.beforeStart(p)
	}
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("%s: opening log: %w", p.name, err)
	}
	cmd := exec.Command(p.bin, p.args...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	// The child dies with the test binary even when no cleanup runs (a
	// timed-out or killed test); Setpgid keeps a terminal's ^C from
	// reaching it before the harness stops it in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("%s: starting %s: %w", p.name, p.bin, err)
	}
	exe := p.exe
	if exe == "" {
		exe = p.bin
	}
	p.reg.add(cmd.Process.Pid, exe)
	done := make(chan struct{})
	p.cmd, p.done = cmd, done
	go func() {
		err := cmd.Wait()
		logf.Close()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		p.reg.remove(cmd.Process.Pid)
		close(done)
	}()
	if p.afterStart != nil {
		if err := p.afterStart(cmd.Process.Pid); err != nil {
			_ = cmd.Process.Kill()
			return fmt.Errorf("%s: %w", p.name, err)
		}
	}
	return nil
}

// exited reports whether the process has ended, and how.
func (p *process) exited() (bool, error) {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	if done == nil {
		return true, errors.New("not started")
	}
	select {
	case <-done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return true, p.err
	default:
		return false, nil
	}
}

// stop ends the process by its PID: SIGTERM, then SIGKILL after grace.
func (p *process) stop(grace time.Duration) {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	// Signalled through os.Process, which holds a pidfd: once the process
	// has been reaped its PID may belong to another, and a kill by number
	// would end that one (the machine's pid_max is 32768 and a run starts
	// processes by the thousand).
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(grace):
		_ = cmd.Process.Kill()
		<-done
	}
	p.mu.Lock()
	p.cmd, p.done = nil, nil
	p.mu.Unlock()
}

// failure describes why the process did not come up: whether it exited and
// the last lines of its log.
func (p *process) failure(cause error) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s did not come up: %v", p.name, cause)
	if ended, err := p.exited(); ended {
		fmt.Fprintf(&b, " (process exited: %v)", err)
	}
	fmt.Fprintf(&b, "\nlast lines of %s:\n%s", p.logPath, tail(p.logPath, 25))
	return errors.New(b.String())
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	lines := bytes.Split(bytes.TrimRight(data, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// waitFor polls check every interval until it succeeds, ctx ends, or one of
// the watched processes exits.
func waitFor(ctx context.Context, interval time.Duration, watch []*process, check func(context.Context) error) error {
	var last error
	for {
		if last = check(ctx); last == nil {
			return nil
		}
		for _, p := range watch {
			if ended, _ := p.exited(); ended {
				return p.failure(last)
			}
		}
		select {
		case <-ctx.Done():
			if len(watch) > 0 {
				return watch[0].failure(fmt.Errorf("%w; last check: %v", ctx.Err(), last))
			}
			return fmt.Errorf("%w; last check: %v", ctx.Err(), last)
		case <-time.After(interval):
		}
	}
}

// pidRegistry records the PIDs of the harness's children in a file inside
// its directory, so that a later harness can end the children of one whose
// test binary died without cleaning up.
type pidRegistry struct {
	path string
	mu   sync.Mutex
	pids map[int]string // pid -> binary path
}

func (r *pidRegistry) add(pid int, bin string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pids[pid] = bin
	r.flush()
}

func (r *pidRegistry) remove(pid int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.pids, pid)
	r.flush()
}

func (r *pidRegistry) flush() {
	var b strings.Builder
	for pid, bin := range r.pids {
		fmt.Fprintf(&b, "%d %s\n", pid, bin)
	}
	_ = os.WriteFile(r.path, []byte(b.String()), 0o600)
}

const (
	dirPrefix    = "isthmus-cluster-"
	ownerFile    = "owner.pid"
	childrenFile = "children.pids"
	cgroupsFile  = "cgroups"
)

// sweepStale ends the children of harnesses under parent whose owning test
// binary is gone and removes their directories. A PID is only signalled
// while it still runs the binary the harness recorded for it, so a reused
// PID is never touched.
func sweepStale(parent string) {
	dirs, _ := filepath.Glob(filepath.Join(parent, dirPrefix+"*"))
	for _, dir := range dirs {
		owner, err := ReadPID(filepath.Join(dir, ownerFile))
		if err != nil || Alive(owner) {
			continue
		}
		data, _ := os.ReadFile(filepath.Join(dir, childrenFile))
		for _, line := range strings.Split(string(data), "\n") {
			pidStr, bin, ok := strings.Cut(line, " ")
			if !ok {
				continue
			}
			pid, err := strconv.Atoi(pidStr)
			if err != nil {
				continue
			}
			if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && exe == bin {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		// A real node's shims and containers are no children of the
		// harness: they are found by the node's cgroup.
		cgroups, _ := os.ReadFile(filepath.Join(dir, cgroupsFile))
		for _, cg := range strings.Fields(string(cgroups)) {
			if strings.HasPrefix(cg, "/"+dirPrefix) && !strings.Contains(cg, "..") {
				_ = removeCgroupTree(cg, 10*time.Second)
			}
		}
		_ = os.RemoveAll(dir)
	}
}

// ReadPID reads the PID a file holds, as the harness, the install cache
// and the demo write their owners' (the file's error when it cannot be
// read).
func ReadPID(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(data)))
}

// Alive reports whether process pid still runs: it exists and is not a
// zombie. The harness, the install tests and the demo ask it of processes
// they did not start themselves (a PID read from a file).
func Alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	// A zombie has exited and only waits for its parent to reap it: a
	// killed container whose shim died too is reaped by PID 1, whenever
	// that gets to it.
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) {
		return stat[i+2] != 'Z'
	}
	return true
}
