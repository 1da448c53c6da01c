package probe

import (
	"bufio"
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a buffer the client writes while the test reads.
type syncBuffer struct {
	mu    sync.Mutex
	lines []string
	part  strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.part.Write(p)
	s := b.part.String()
	for {
		line, rest, ok := strings.Cut(s, "\n")
		if !ok {
			break
		}
		b.lines = append(b.lines, line)
		s = rest
	}
	b.part.Reset()
	b.part.WriteString(s)
	return len(p), nil
}

func (b *syncBuffer) events() []Event {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []Event
	for _, l := range b.lines {
		if e, ok := Parse(l); ok {
			out = append(out, e)
		}
	}
	return out
}

// TestClientAndServer: the client resolves (here through a lookup that
// fails twice, as a resolver does before the import reaches it), then
// connects to the real server on loopback and reports its reply; once the
// server is gone, each connection fails and says why.
func TestClientAndServer(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, stopServer := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- Serve(sctx, lis, "east") }()

	// The server alone answers a plain TCP client with its line.
	conn, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(conn).ReadString('\n'); err != nil || line != "east\n" {
		t.Fatalf("server said %q, %v", line, err)
	}
	conn.Close()

	port := lis.Addr().(*net.TCPAddr).Port
	lookups := 0
	var out syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- Client(ctx, ClientConfig{Name: "verify.ns.svc.clusterset.local", Port: port, Every: 20 * time.Millisecond, Timeout: time.Second, For: time.Minute,
			Lookup: func(_ context.Context, host string) ([]string, error) {
				if lookups++; lookups < 3 {
					return nil, errors.New("no such host")
				}
				return []string{"127.0.0.1"}, nil
			}}, &out)
	}()
	waitFor(t, &out, "a reply from east", func(e Event) bool { return e.Reply == "east" })
	ev := out.events()
	if r := ev[0]; r.Step != "resolve" || r.Attempts != 3 || len(r.Addrs) != 1 || r.Addrs[0] != "127.0.0.1" || r.Err != "" {
		t.Errorf("first event %+v, want resolved to 127.0.0.1 at the third attempt", r)
	}
	stopServer()
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	waitFor(t, &out, "a failed connection", func(e Event) bool { return e.Step == "connect" && strings.Contains(e.Err, "refused") })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("client: %v", err)
	}
}

// TestClientGivesUp: a name that never resolves ends the client with an
// error and a last event saying why.
func TestClientGivesUp(t *testing.T) {
	var out syncBuffer
	err := Client(context.Background(), ClientConfig{Name: "nowhere", Port: 80, Every: 10 * time.Millisecond, Timeout: time.Second, For: 100 * time.Millisecond,
		Lookup: func(context.Context, string) ([]string, error) { return nil, errors.New("no such host") }}, &out)
	if err == nil || !strings.Contains(err.Error(), "no such host") {
		t.Errorf("client: %v, want no such host", err)
	}
	ev := out.events()
	if len(ev) != 1 || ev[0].Step != "resolve" || ev[0].Err != "no such host" || ev[0].Attempts < 2 {
		t.Errorf("events %+v, want one failed resolve", ev)
	}
}

func TestParse(t *testing.T) {
	for line, want := range map[string]bool{
		`{"step":"connect","reply":"a","ms":3}`: true,
		`{"msg":"not ours"}`:                    false,
		`time=... level=INFO`:                   false,
		`{"step":`:                              false,
	} {
		if _, ok := Parse(line); ok != want {
			t.Errorf("Parse(%q) = %v, want %v", line, ok, want)
		}
	}
}

func waitFor(t *testing.T, out *syncBuffer, what string, ok func(Event) bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for _, e := range out.events() {
			if ok(e) {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no %s in %+v", what, out.events())
}
