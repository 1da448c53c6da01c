// Package netnstest runs commands and code inside the network namespaces
// that tests and benchmarks create, and relays a loopback address into
// them: the pieces every test with real networks needs.
package netnstest

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"github.com/vishvananda/netns"
)

// Sh runs a command and returns its combined output, or an error naming
// the command and its output.
func Sh(args ...string) (string, error) {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// Run runs fn on a thread switched into the named namespace. Sockets fn
// creates stay in that namespace after the thread switches back.
func Run(name string, fn func() error) error {
	return runIn(name, func() (netns.NsHandle, error) { return netns.GetFromName(name) }, fn)
}

// RunPID is Run for the network namespace of process pid: the anonymous
// namespaces that `unshare --net` makes, which have no name.
func RunPID(pid int, fn func() error) error {
	return runIn(fmt.Sprintf("of pid %d", pid), func() (netns.NsHandle, error) { return netns.GetFromPid(pid) }, fn)
}

func runIn(name string, open func() (netns.NsHandle, error), fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("reading this thread's netns: %w", err)
	}
	defer orig.Close()
	h, err := open()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("opening netns %s: %w", name, err)
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("entering netns %s: %w", name, err)
	}
	fnErr := fn()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: Go retires it when this goroutine ends.
		return fmt.Errorf("leaving netns %s: %w", name, err)
	}
	runtime.UnlockOSThread()
	return fnErr
}

// Forward serves addr inside namespace ns by relaying each connection to
// the same address in this process's namespace: how a daemon inside a
// namespace reaches the harness's apiserver on the host's loopback, never
// through a tunnel. The returned function stops it.
func Forward(ns, addr string) (func(), error) {
	var l net.Listener
	if err := Run(ns, func() (err error) { l, err = net.Listen("tcp", addr); return err }); err != nil {
		return nil, err
	}
	go func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer in.Close()
				out, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err != nil {
					return
				}
				defer out.Close()
				done := make(chan struct{}, 2)
				go func() { _, _ = io.Copy(out, in); done <- struct{}{} }()
				go func() { _, _ = io.Copy(in, out); done <- struct{}{} }()
				<-done
			}()
		}
	}()
	return func() { l.Close() }, nil
}
