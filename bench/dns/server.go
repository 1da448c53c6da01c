package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/isthmus-dev/isthmus/bench/internal/procstat"
)

// server is one DNS server under test, run pinned to CPU 1.
type server struct {
	name    string
	cmd     []string
	port    int
	cached  bool
	proc    *exec.Cmd
	startup time.Duration
	sat     []satResult
	lat     []latResult
	upd     []time.Duration // from the write's response to the new answer
	updSent []time.Duration // from sending the write
	rss     int             // resident MB at the end of the run
	peak    int             // the most resident MB at any time (VmHWM)
}

func corefileServer(work, dir, name string, port int, kubeconfig, context string, cache bool) *server {
	extra := ""
	if cache {
		extra = "    cache 30\n"
	}
	corefile := fmt.Sprintf(`clusterset.local:%d {
    bind 127.0.0.1
%s    kubernetes cluster.local clusterset.local {
        kubeconfig %s %s
        multicluster clusterset.local
    }
}
`, port, extra, kubeconfig, context)
	path := filepath.Join(work, "Corefile."+name)
	_ = os.WriteFile(path, []byte(corefile), 0o644)
	return &server{name: name, cmd: []string{filepath.Join(dir, "coredns"), "-conf", path}, port: port, cached: cache}
}

func (s *server) addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

func (s *server) start(ctx context.Context, work, probe string) error {
	args := append([]string{"-c", "1"}, s.cmd...)
	s.proc = exec.CommandContext(ctx, "taskset", args...)
	s.proc.Env = append(os.Environ(), "GOMAXPROCS=1")
	logf, err := os.Create(filepath.Join(work, s.name+".log"))
	if err != nil {
		return err
	}
	s.proc.Stdout, s.proc.Stderr = logf, logf
	began := time.Now()
	if err := s.proc.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", s.name, err)
	}
	c := &dns.Client{Timeout: 200 * time.Millisecond}
	for time.Since(began) < time.Minute {
		q := new(dns.Msg)
		q.SetQuestion(probe, dns.TypeA)
		if r, _, err := c.Exchange(q, s.addr()); err == nil && r.Rcode == dns.RcodeSuccess && len(r.Answer) > 0 {
			s.startup = time.Since(began)
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	out, _ := os.ReadFile(logf.Name())
	return fmt.Errorf("%s never answered %s:\n%s", s.name, probe, out)
}

func (s *server) stop() {
	if s.proc != nil && s.proc.Process != nil {
		_ = s.proc.Process.Kill()
		_ = s.proc.Wait()
	}
}

// cpu is the server's user+system CPU time so far (0 once it is gone).
func (s *server) cpu() time.Duration {
	_, cpu, _ := procstat.Process(s.proc.Process.Pid)
	return cpu
}

func (s *server) rssMB() int { return s.statusMB("VmRSS:") }

// statusMB reads a size field of /proc/<pid>/status in MB.
func (s *server) statusMB(field string) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.proc.Process.Pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, field) {
			kb, _ := strconv.Atoi(strings.Fields(l)[1])
			return kb / 1024
		}
	}
	return 0
}

// Note: taskset execs the server, so the process is the server itself.
