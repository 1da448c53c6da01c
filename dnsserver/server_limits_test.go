package dnsserver

import (
	"errors"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// panicOnce panics in the first Observe, standing in for a bug a query
// could find on the TCP path.
type panicOnce struct{ done atomic.Bool }

func (p *panicOnce) Observe(uint16, int, time.Duration) {
	if p.done.CompareAndSwap(false, true) {
		panic("a bug found by a query")
	}
}

func TestTCPPanicClosesOnlyThatConnection(t *testing.T) {
	b := testBuilder(t, Config{})
	h, err := NewHandler(b.Config(), &panicOnce{})
	if err != nil {
		t.Fatal(err)
	}
	h.Store(b.Build())
	addr := startServer(t, h)

	c := &dns.Client{Net: "tcp", Timeout: 2 * time.Second}
	m := new(dns.Msg)
	m.SetQuestion("echo.demo.svc.clusterset.local.", dns.TypeA)
	if r, _, err := c.Exchange(m, addr); err == nil {
		t.Fatalf("the panicking query was answered: %v", r)
	}
	// The process is still here (a panic would have ended the test
	// binary), and the next connection is served.
	mustAnswer(t, addr)
}

func TestTCPConnectionsAreCapped(t *testing.T) {
	h, _ := newTestHandler(t, Config{})
	addr := startServerWith(t, h, func(l *Listener) { l.maxTCP = 2 })

	m := new(dns.Msg)
	m.SetQuestion("echo.demo.svc.clusterset.local.", dns.TypeA)
	open := func() *dns.Conn {
		t.Helper()
		c, err := dns.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	ask := func(c *dns.Conn, wait time.Duration) (*dns.Msg, error) {
		_ = c.SetDeadline(time.Now().Add(wait))
		if err := c.WriteMsg(m); err != nil {
			return nil, err
		}
		return c.ReadMsg()
	}
	first, second := open(), open()
	for _, c := range []*dns.Conn{first, second} {
		if _, err := ask(c, 5*time.Second); err != nil {
			t.Fatalf("a connection within the cap: %v", err)
		}
	}
	third := open()
	if r, err := ask(third, 300*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a third connection over a cap of 2 was served: %v, %v", r, err)
	}
	first.Close()
	// The query already written waits in the socket; the freed slot lets
	// the server accept the connection and answer it.
	_ = third.SetDeadline(time.Now().Add(5 * time.Second))
	if r, err := third.ReadMsg(); err != nil || len(r.Answer) != 1 {
		t.Fatalf("after a slot was freed: %v, %v", r, err)
	}
}
