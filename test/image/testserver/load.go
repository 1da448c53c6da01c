package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
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
	go kept.run(&http.Client{Timeout: timeout, Transport: &http.Transport{MaxConnsPerHost: 1, IdleConnTimeout: time.Hour}}, url, interval)
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/stats", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]loadStats{"newConnections": fresh.snapshot(), "longLived": kept.snapshot()})
	})
	log.Printf("loading %s every %v on new connections and on one long-lived connection; counters on :8080/stats", url, interval)
	srv := &http.Server{Addr: ":8080", Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return srv.ListenAndServe()
}
