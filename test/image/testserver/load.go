package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync"
	"time"
)

// loadStats are one client loop's counters.
type loadStats struct {
	Requests int64 `json:"requests"`
	Failures int64 `json:"failures"`
	// Errors are the last few failures, newest last.
	Errors []string `json:"errors,omitempty"`
	// MaxMillis is the longest request, failed or not.
	MaxMillis int64 `json:"maxMillis"`
	// Connections is how many TCP connections the loop opened.
	Connections int64 `json:"connections"`
	// Ended says how the loop's last few connections ended, newest last:
	// the first error a read or write on it returned ("connection reset
	// by peer", "EOF" when the far end closed it, a timeout), or that the
	// client closed it. A long-lived connection that was replaced without
	// a failed request (the transport retries an idempotent GET on a new
	// connection) is explained here.
	Ended []string `json:"ended,omitempty"`
}

type loadLoop struct {
	mu    sync.Mutex
	stats loadStats
}

func (l *loadLoop) snapshot() loadStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.stats
	s.Errors = append([]string(nil), s.Errors...)
	s.Ended = append([]string(nil), s.Ended...)
	return s
}

// ended notes how one of the loop's connections ended, once per
// connection.
func (l *loadLoop) ended(how string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stats.Ended = append(l.stats.Ended, fmt.Sprintf("%s %s", time.Now().UTC().Format(time.RFC3339Nano), how))
	if len(l.stats.Ended) > 10 {
		l.stats.Ended = l.stats.Ended[1:]
	}
}

// dial opens connections that report to the loop how they end.
func (l *loadLoop) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return &trackedConn{Conn: c, loop: l, local: c.LocalAddr().String()}, nil
}

// trackedConn records the first error of its reads and writes, or its
// close, with the loop.
type trackedConn struct {
	net.Conn
	loop  *loadLoop
	local string
	once  sync.Once
}

func (c *trackedConn) end(how string) {
	c.once.Do(func() { c.loop.ended(fmt.Sprintf("connection from %s: %s", c.local, how)) })
}

func (c *trackedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil {
		c.end("read: " + err.Error())
	}
	return n, err
}

func (c *trackedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if err != nil {
		c.end("write: " + err.Error())
	}
	return n, err
}

func (c *trackedConn) Close() error {
	c.end("closed by the client")
	return c.Conn.Close()
}

// run GETs url every interval with client until the process ends. A
// request may take up to the client's timeout; the next one waits for it,
// so a stall shows as one long request, not as many.
func (l *loadLoop) run(client *http.Client, url string, interval time.Duration) {
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		if !info.Reused {
			l.mu.Lock()
			l.stats.Connections++
			l.mu.Unlock()
		}
	}}
	for {
		began := time.Now()
		err := getOnce(client, url, trace)
		took := time.Since(began)
		l.mu.Lock()
		l.stats.Requests++
		if took.Milliseconds() > l.stats.MaxMillis {
			l.stats.MaxMillis = took.Milliseconds()
		}
		if err != nil {
			l.stats.Failures++
			l.stats.Errors = append(l.stats.Errors, fmt.Sprintf("%s %v", began.UTC().Format(time.RFC3339Nano), err))
			if len(l.stats.Errors) > 10 {
				l.stats.Errors = l.stats.Errors[1:]
			}
		}
		l.mu.Unlock()
		if err != nil {
			log.Printf("request to %s failed after %v: %v", url, took, err)
		}
		time.Sleep(interval - min(took, interval))
	}
}

func getOnce(client *http.Client, url string, trace *httptrace.ClientTrace) error {
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// load runs both loops and serves their counters.
func load(url string) error {
	const interval, timeout = 50 * time.Millisecond, 10 * time.Second
	var fresh, kept loadLoop
	go fresh.run(&http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true}}, url, interval)
	go kept.run(&http.Client{Timeout: timeout, Transport: &http.Transport{MaxConnsPerHost: 1, IdleConnTimeout: time.Hour, DialContext: kept.dial}}, url, interval)
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/stats", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]loadStats{"newConnections": fresh.snapshot(), "longLived": kept.snapshot()})
	})
	log.Printf("loading %s every %v on new connections and on one long-lived connection; counters on :8080/stats", url, interval)
	srv := &http.Server{Addr: ":8080", Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return srv.ListenAndServe()
}
