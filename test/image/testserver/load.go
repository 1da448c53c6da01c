package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
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
	return s
}

// count records one request that began at began.
func (l *loadLoop) count(began time.Time, err error) {
	took := time.Since(began)
	l.mu.Lock()
	l.stats.Requests++
	l.stats.MaxMillis = max(l.stats.MaxMillis, took.Milliseconds())
	if err != nil {
		l.stats.Failures++
		l.stats.Errors = append(l.stats.Errors, fmt.Sprintf("%s %v", began.UTC().Format(time.RFC3339Nano), err))
		if len(l.stats.Errors) > 10 {
			l.stats.Errors = l.stats.Errors[1:]
		}
	}
	l.mu.Unlock()
	if err != nil {
		log.Printf("request failed after %v: %v", took, err)
	}
}

func (l *loadLoop) opened() {
	l.mu.Lock()
	l.stats.Connections++
	l.mu.Unlock()
}

// fresh GETs url every interval, each on a new connection (a new DNS
// lookup and a new path through kube-proxy). A request may take up to the
// client's timeout; the next one waits for it, so a stall shows as one
// long request, not as many.
func (l *loadLoop) fresh(url string, interval, timeout time.Duration) {
	client := &http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true}}
	trace := &httptrace.ClientTrace{GotConn: func(httptrace.GotConnInfo) { l.opened() }}
	for {
		began := time.Now()
		err := getOnce(client, url, trace)
		l.count(began, err)
		time.Sleep(interval - min(time.Since(began), interval))
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

// kept GETs target every interval on one TCP connection, opened again
// only after an error on it: a failed request, and Connections counts
// every opening. It speaks HTTP/1.1 itself rather than through
// http.Transport, which also drops a healthy connection of its own accord
// (when its writer goroutine has not reported the request written within
// 50 ms of the response, as on a starved CPU) and retries the GET on a new
// one: that would count as a broken connection when none broke.
func (l *loadLoop) kept(target string, interval, timeout time.Duration) {
	u, err := url.Parse(target)
	if err != nil {
		log.Fatalf("load: %v", err)
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "80")
	}
	request := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: testserver-load\r\n\r\n", u.RequestURI(), u.Host)
	var conn net.Conn
	var reader *bufio.Reader
	for {
		began := time.Now()
		err := func() error {
			if conn == nil {
				c, err := net.DialTimeout("tcp", addr, timeout)
				if err != nil {
					return err
				}
				l.opened()
				conn, reader = c, bufio.NewReader(c)
			}
			if err := conn.SetDeadline(began.Add(timeout)); err != nil {
				return err
			}
			if _, err := io.WriteString(conn, request); err != nil {
				return err
			}
			resp, err := http.ReadResponse(reader, nil)
			if err != nil {
				return err
			}
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err != nil {
				return err
			}
			if resp.Close {
				return fmt.Errorf("the server closed the connection (Connection: close)")
			}
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("status %d", resp.StatusCode)
			}
			return nil
		}()
		if err != nil && conn != nil {
			conn.Close()
			conn = nil
		}
		l.count(began, err)
		time.Sleep(interval - min(time.Since(began), interval))
	}
}

// load runs both loops and serves their counters.
func load(url string) error {
	const interval, timeout = 50 * time.Millisecond, 10 * time.Second
	var fresh, kept loadLoop
	go fresh.fresh(url, interval, timeout)
	go kept.kept(url, interval, timeout)
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/stats", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]loadStats{"newConnections": fresh.snapshot(), "longLived": kept.snapshot()})
	})
	log.Printf("loading %s every %v on new connections and on one long-lived connection; counters on :8080/stats", url, interval)
	srv := &http.Server{Addr: ":8080", Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return srv.ListenAndServe()
}
