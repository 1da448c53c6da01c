// Package serve runs the observability endpoints every Isthmus role
// exposes on one HTTP listener: Prometheus metrics at /metrics, liveness at
// /healthz and readiness at /readyz. Roles register readiness checks; the
// process is ready when every check passes. Group runs a process's parts
// together, so that one failing stops the rest.
package serve

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"
)

// Check reports nil when the thing it checks is ready, else why not.
type Check func() error

// Health collects the readiness checks of a process's roles.
type Health struct {
	mu     sync.RWMutex
	checks map[string]Check
}

// NewHealth returns a Health with no checks (ready).
func NewHealth() *Health { return &Health{checks: map[string]Check{}} }

// Add registers a named readiness check; a later Add with the same name
// replaces it.
func (h *Health) Add(name string, c Check) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.checks[name] = c
}

// Ready runs every check and returns the failures, joined.
func (h *Health) Ready() error {
	h.mu.RLock()
	names := make([]string, 0, len(h.checks))
	for n := range h.checks {
		names = append(names, n)
	}
	h.mu.RUnlock()
	sort.Strings(names)
	var errs []error
	for _, n := range names {
		h.mu.RLock()
		c := h.checks[n]
		h.mu.RUnlock()
		if err := c(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", n, err))
		}
	}
	return errors.Join(errs...)
}

// NewRegistry returns a Prometheus registry with the Go runtime and
// process collectors, for a process's roles to register their metrics in.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Handler serves /metrics, /healthz and /readyz.
func Handler(reg *prometheus.Registry, h *Health) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := h.Ready(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			for _, line := range strings.Split(err.Error(), "\n") {
				fmt.Fprintln(w, "not ready:", line)
			}
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// newServer bounds every stage of a request, so a client that connects
// and trickles its request, never reads the answer, or idles on a
// keep-alive connection cannot hold a goroutine and its buffers for long.
func newServer(handler http.Handler) *http.Server {
	return &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
	}
}

// Run serves the observability endpoints on addr until ctx ends. An empty
// addr serves nothing: every listener needs a reason. With reusePort
// another process may listen on addr too (SO_REUSEPORT): a pod on the
// host network that surges beside its predecessor during a rolling update.
func Run(ctx context.Context, addr string, reusePort bool, reg *prometheus.Registry, h *Health, log *slog.Logger) error {
	return serve(ctx, "metrics and health", addr, reusePort, Handler(reg, h), log)
}

// HTTP serves handler on addr until ctx ends; what names it in the log
// and in errors. An empty addr serves nothing.
func HTTP(ctx context.Context, what, addr string, handler http.Handler, log *slog.Logger) error {
	return serve(ctx, what, addr, false, handler, log)
}

func serve(ctx context.Context, what, addr string, reusePort bool, handler http.Handler, log *slog.Logger) error {
	if addr == "" {
		<-ctx.Done()
		return nil
	}
	var lc net.ListenConfig
	if reusePort {
		lc.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, unix.SO_REUSEPORT, 1) }); err != nil {
				return err
			}
			return serr
		}
	}
	l, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("listening for %s on %s: %w", what, addr, err)
	}
	srv := newServer(handler)
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	log.Info("serving "+what, "addr", l.Addr().String())
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serving %s: %w", what, err)
	}
	return nil
}
