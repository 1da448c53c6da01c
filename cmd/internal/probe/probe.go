// Package probe is what `isthmusctl verify` runs in its short-lived pods,
// as the hidden `isthmus probe` subcommands of the isthmus image: a
// server that answers every TCP connection with one line naming its
// cluster, and a client that resolves a clusterset name from inside its
// pod, then connects to it again and again, writing one JSON event a
// line to its log, which verify follows.
package probe

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// Serve answers every connection on lis with reply and a newline, until
// ctx ends.
func Serve(ctx context.Context, lis net.Listener, reply string) error {
	go func() {
		<-ctx.Done()
		lis.Close()
	}()
	for {
		conn, err := lis.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go func() {
			defer conn.Close()
			_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			_, _ = io.WriteString(conn, reply+"\n")
		}()
	}
}

// Event is one line of the client's log.
type Event struct {
	// Step is "resolve" or "connect".
	Step string `json:"step"`
	// Addrs are the addresses the name resolved to (resolve).
	Addrs []string `json:"addrs,omitempty"`
	// Attempts is how many lookups it took (resolve).
	Attempts int `json:"attempts,omitempty"`
	// Addr is the address connected to (connect).
	Addr string `json:"addr,omitempty"`
	// Reply is the server's line: its cluster (connect).
	Reply string `json:"reply,omitempty"`
	// Err is why the step failed; empty when it succeeded.
	Err string `json:"err,omitempty"`
	// Millis is how long the step took, in milliseconds.
	Millis int64 `json:"ms"`
}

// Parse reads an event from a log line; other lines are not events.
func Parse(line string) (Event, bool) {
	var e Event
	if !strings.HasPrefix(strings.TrimSpace(line), "{") || json.Unmarshal([]byte(line), &e) != nil || e.Step == "" {
		return Event{}, false
	}
	return e, true
}

// ClientConfig is what the client does.
type ClientConfig struct {
	// Name is resolved until it resolves, then Port on its first address
	// is connected to every Every, each attempt bounded by Timeout, until
	// For has passed since the start (or the context ends).
	Name    string
	Port    int
	Every   time.Duration
	Timeout time.Duration
	For     time.Duration
	// Lookup resolves a name: the pod's own resolver (net.DefaultResolver,
	// reading its resolv.conf) in the image.
	Lookup func(ctx context.Context, host string) ([]string, error)
}

// Client runs the client, writing events to out.
func Client(ctx context.Context, cfg ClientConfig, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, cfg.For)
	defer cancel()
	enc := json.NewEncoder(out)
	began := time.Now()
	var addrs []string
	var lastErr error
	for attempts := 1; ; attempts++ {
		lctx, lcancel := context.WithTimeout(ctx, cfg.Timeout)
		addrs, lastErr = cfg.Lookup(lctx, cfg.Name)
		lcancel()
		if lastErr == nil && len(addrs) > 0 {
			if err := enc.Encode(Event{Step: "resolve", Addrs: addrs, Attempts: attempts, Millis: time.Since(began).Milliseconds()}); err != nil {
				return err
			}
			break
		}
		if lastErr == nil {
			lastErr = errors.New("no address")
		}
		if !wait(ctx, cfg.Every) {
			_ = enc.Encode(Event{Step: "resolve", Attempts: attempts, Err: lastErr.Error(), Millis: time.Since(began).Milliseconds()})
			return fmt.Errorf("resolving %s: %w", cfg.Name, lastErr)
		}
	}
	addr := net.JoinHostPort(addrs[0], strconv.Itoa(cfg.Port))
	for {
		e := connect(ctx, addr, cfg.Timeout)
		if err := enc.Encode(e); err != nil {
			return err
		}
		if !wait(ctx, cfg.Every) {
			return nil
		}
	}
}

// connect dials addr and reads the server's line.
func connect(ctx context.Context, addr string, timeout time.Duration) Event {
	began := time.Now()
	e := Event{Step: "connect", Addr: addr}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err == nil {
		defer conn.Close()
		_ = conn.SetReadDeadline(time.Now().Add(timeout))
		var line string
		if line, err = bufio.NewReader(conn).ReadString('\n'); err == nil {
			e.Reply = strings.TrimSpace(line)
		}
	}
	if err != nil {
		e.Err = err.Error()
	}
	e.Millis = time.Since(began).Milliseconds()
	return e
}

func wait(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
