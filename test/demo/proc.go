package demo

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// proc is a process the demo runs inside a network namespace. `ip netns
// exec` execs the command, so its PID is the process's own.
type proc struct {
	cmd    *exec.Cmd
	log    *os.File
	exited chan error
}

func startIn(ns, logPath, bin string, args ...string) (*proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(f, "=== start %s\n", time.Now().Format(time.StampMilli))
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, bin}, args...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), "ISTHMUS_LOG_LEVEL=info")
	// Dies with the demo even when the demo is killed outright.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, err
	}
	p := &proc{cmd: cmd, log: f, exited: make(chan error, 1)}
	go func() { p.exited <- cmd.Wait(); f.Close() }()
	return p, nil
}

// stop signals the process and waits for it, killing it after 10 s.
func (p *proc) stop(sig syscall.Signal) {
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// running reports whether the process has not exited.
func (p *proc) running() bool {
	select {
	case err := <-p.exited:
		p.exited <- err
		return false
	default:
		return true
	}
}
