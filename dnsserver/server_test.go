package dnsserver

import (
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/isthmus-dev/isthmus/test/freeport"
)

// startServer serves h on a free loopback port until the test ends.
func startServer(t *testing.T, h *Handler) string {
	t.Helper()
	return startServerWith(t, h, nil)
}

// startServerWith is startServer with a chance to adjust the Listener
// before it serves.
func startServerWith(t *testing.T, h *Handler, adjust func(*Listener)) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	// Outside the ephemeral range: dig could otherwise be given the same
	// port and hear its own query (see test/freeport).
	var l *Listener
	var err error
	for range 10 {
		if l, err = Listen(ctx, freeport.Addr(t), 2); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	if adjust != nil {
		adjust(l)
	}
	done := make(chan error, 1)
	go func() { done <- l.Serve(ctx, h, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return l.Addr().String()
}

// mustAnswer checks the server still answers a good query on both
// transports. UDP may drop a query while the socket's buffer is still
// full of a flood, so it retries for a while, as a resolver would.
func mustAnswer(t *testing.T, addr string) {
	t.Helper()
	for _, net := range []string{"udp", "tcp"} {
		c := &dns.Client{Net: net, Timeout: time.Second}
		m := new(dns.Msg)
		m.SetQuestion("echo.demo.svc.clusterset.local.", dns.TypeA)
		var r *dns.Msg
		var err error
		for try := 0; try < 15; try++ {
			if r, _, err = c.Exchange(m, addr); err == nil {
				break
			}
		}
		if err != nil {
			t.Fatalf("%s: server stopped answering: %v", net, err)
		}
		if len(r.Answer) != 1 || r.Rcode != dns.RcodeSuccess {
			t.Fatalf("%s: %v", net, r)
		}
	}
}

func TestServerSurvivesMalformedPackets(t *testing.T) {
	h, _ := newTestHandler(t, Config{})
	addr := startServer(t, h)
	mustAnswer(t, addr)

	var bad [][]byte
	for _, name := range []string{"short-header", "pointer-loop", "opt-name-loop", "huge-edns", "many-questions", "label-too-long", "zero-questions", "two-questions", "notify", "update", "edns-version-1"} {
		bad = append(bad, corpusPacket(t, name))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		p := make([]byte, rng.IntN(600))
		for i := range p {
			p[i] = byte(rng.Uint32())
		}
		bad = append(bad, p)
	}
	// Mutations of a good query: flipped bytes and cut tails.
	good := corpusPacket(t, "srv-headless")
	for i := range 2000 {
		p := append([]byte(nil), good...)
		p[rng.IntN(len(p))] ^= byte(rng.Uint32())
		if i%2 == 0 {
			p = p[:rng.IntN(len(p))]
		}
		bad = append(bad, p)
	}

	u, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	for _, p := range bad {
		if _, err := u.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	mustAnswer(t, addr)

	// TCP: garbage after a length prefix, a prefix promising more than is
	// sent, a zero-length message, a lone byte; each on its own connection.
	for _, p := range bad[:200] {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = c.Write(binary.BigEndian.AppendUint16(nil, uint16(len(p))))
		_, _ = c.Write(p)
		c.Close()
	}
	for _, raw := range [][]byte{{0xFF, 0xFF, 1, 2, 3}, {0, 0}, {7}} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = c.Write(raw)
		c.Close()
	}
	mustAnswer(t, addr)
}

// TestServerTCPPipelining: several queries on one TCP connection, all
// answered.
func TestServerTCPPipelining(t *testing.T) {
	h, _ := newTestHandler(t, Config{})
	addr := startServer(t, h)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var out []byte
	names := []string{"echo.demo.svc.clusterset.local.", "db.demo.svc.clusterset.local.", "big.other.svc.clusterset.local."}
	for i, n := range names {
		m := new(dns.Msg)
		m.SetQuestion(n, dns.TypeA)
		m.Id = uint16(100 + i)
		b, _ := m.Pack()
		out = binary.BigEndian.AppendUint16(out, uint16(len(b)))
		out = append(out, b...)
	}
	if _, err := c.Write(out); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	want := map[uint16]int{100: 1, 101: 3, 102: 200}
	for range names {
		var l [2]byte
		if _, err := io.ReadFull(c, l[:]); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, binary.BigEndian.Uint16(l[:]))
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatal(err)
		}
		r := new(dns.Msg)
		if err := r.Unpack(b); err != nil {
			t.Fatal(err)
		}
		if len(r.Answer) != want[r.Id] || r.Truncated {
			t.Errorf("id %d: %d answers (TC=%v), want %d", r.Id, len(r.Answer), r.Truncated, want[r.Id])
		}
		delete(want, r.Id)
	}
}
