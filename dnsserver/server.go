package dnsserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// MaxTCPConns bounds the TCP connections served at once. Each holds a
// goroutine and buffers for up to IdleTimeout, so without a cap anyone
// who can reach the port could hold memory open; queries past the cap
// wait in the kernel's accept queue until a connection ends.
const MaxTCPConns = 1024

// Listener holds the bound UDP sockets and TCP listener of one address.
type Listener struct {
	udp  []*net.UDPConn
	tcp  net.Listener
	addr netip.AddrPort
	// maxTCP is MaxTCPConns; tests lower it.
	maxTCP int
}

// Listen binds addr over UDP (sockets sockets sharing the port with
// SO_REUSEPORT, so the kernel spreads queries over that many reader
// goroutines) and TCP. Port 0 picks one port free for both.
func Listen(ctx context.Context, addr string, sockets int) (*Listener, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("listen address %q: %w", addr, err)
	}
	tries := 1
	if port == "0" {
		tries = 20 // a port free for UDP may be taken for TCP: pick another
	}
	for i := 1; ; i++ {
		l, err := listen(ctx, addr, max(sockets, 1))
		if err == nil || i >= tries {
			return l, err
		}
	}
}

func listen(ctx context.Context, addr string, sockets int) (*Listener, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		})
		return errors.Join(err, serr)
	}}
	l := &Listener{maxTCP: MaxTCPConns}
	first, err := lc.ListenPacket(ctx, "udp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening on udp %s: %w", addr, err)
	}
	l.udp = append(l.udp, first.(*net.UDPConn))
	l.addr = first.LocalAddr().(*net.UDPAddr).AddrPort()
	bound := l.addr.String()
	for range sockets - 1 {
		c, err := lc.ListenPacket(ctx, "udp", bound)
		if err != nil {
			l.Close()
			return nil, fmt.Errorf("listening on udp %s: %w", bound, err)
		}
		l.udp = append(l.udp, c.(*net.UDPConn))
	}
	if l.tcp, err = lc.Listen(ctx, "tcp", bound); err != nil {
		l.Close()
		return nil, fmt.Errorf("listening on tcp %s: %w", bound, err)
	}
	return l, nil
}

// Addr is the bound address (UDP and TCP share it).
func (l *Listener) Addr() netip.AddrPort { return l.addr }

// Close closes every socket.
func (l *Listener) Close() {
	for _, c := range l.udp {
		c.Close()
	}
	if l.tcp != nil {
		l.tcp.Close()
	}
}

// Serve answers on l with h until ctx ends, then closes l. UDP is read
// by one goroutine per socket, each with its own buffers, straight into
// Handler.Respond (no per-query allocation); TCP goes through miekg/dns's
// server, which handles framing, pipelining and idle timeouts.
func (l *Listener) Serve(ctx context.Context, h *Handler, log *slog.Logger) error {
	tcp := &dns.Server{
		Listener:      newCapped(l.tcp, l.maxTCP),
		Handler:       &recovering{h: h, log: log},
		ReadTimeout:   5 * time.Second,
		WriteTimeout:  5 * time.Second,
		IdleTimeout:   func() time.Duration { return 10 * time.Second },
		MaxTCPQueries: 1000,
	}
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	wg.Go(func() {
		if err := tcp.ActivateAndServe(); err != nil && ctx.Err() == nil {
			errs <- fmt.Errorf("serving tcp: %w", err)
		}
	})
	for _, c := range l.udp {
		wg.Go(func() { serveUDP(ctx, c, h, log) })
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errs:
	}
	_ = tcp.Shutdown()
	l.Close()
	wg.Wait()
	return err
}

func serveUDP(ctx context.Context, c *net.UDPConn, h *Handler, log *slog.Logger) {
	in := make([]byte, 65535)
	out := make([]byte, 0, 65535)
	for {
		n, from, err := c.ReadFromUDPAddrPort(in)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			continue // e.g. ICMP-reported errors from an earlier write
		}
		if resp := respondSafely(h, out, in[:n], from.Addr().Unmap(), log); resp != nil {
			_, _ = c.WriteToUDPAddrPort(resp, from)
		}
	}
}

// respondSafely keeps the server serving if a packet ever finds a bug:
// the packet is dropped and logged, the loop goes on.
func respondSafely(h *Handler, out, req []byte, from netip.Addr, log *slog.Logger) (resp []byte) {
	defer func() {
		if r := recover(); r != nil {
			log.Error("answering a query panicked; dropped it", "panic", r, "from", from)
			resp = nil
		}
	}()
	return h.Respond(out, req, from, false)
}

// recovering keeps the TCP side serving if a query ever finds a bug, as
// respondSafely does for UDP: miekg/dns runs handlers on the connection's
// goroutine without a recover, so one panic would end the process. The
// connection is closed, as its answer is lost.
type recovering struct {
	h   dns.Handler
	log *slog.Logger
}

func (r *recovering) ServeDNS(w dns.ResponseWriter, m *dns.Msg) {
	defer func() {
		if p := recover(); p != nil {
			r.log.Error("answering a query over tcp panicked; closed the connection", "panic", p, "from", w.RemoteAddr().String())
			_ = w.Close()
		}
	}()
	r.h.ServeDNS(w, m)
}

// capped hands out at most n connections at once: Accept waits for a
// slot (or for Close), and a connection's Close frees its slot.
type capped struct {
	net.Listener
	slots  chan struct{}
	closed chan struct{}
	once   sync.Once
}

func newCapped(l net.Listener, n int) *capped {
	return &capped{Listener: l, slots: make(chan struct{}, n), closed: make(chan struct{})}
}

func (c *capped) Accept() (net.Conn, error) {
	select {
	case c.slots <- struct{}{}:
	case <-c.closed:
		return nil, net.ErrClosed
	}
	conn, err := c.Listener.Accept()
	if err != nil {
		<-c.slots
		return nil, err
	}
	return &slotConn{Conn: conn, free: func() { <-c.slots }}, nil
}

func (c *capped) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Listener.Close()
}

type slotConn struct {
	net.Conn
	once sync.Once
	free func()
}

func (c *slotConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.free)
	return err
}
