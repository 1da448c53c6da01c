package serve

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestHandler(t *testing.T) {
	reg := NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "isthmus_test_total", Help: "test"})
	reg.MustRegister(c)
	c.Inc()
	h := NewHealth()
	var synced bool
	h.Add("informers", func() error {
		if !synced {
			return errors.New("not synced yet")
		}
		return nil
	})
	srv := httptest.NewServer(Handler(reg, h))
	defer srv.Close()
	get := func(path string) (int, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	tests := []struct {
		path     string
		synced   bool
		wantCode int
		wantBody string
	}{
		{"/healthz", false, 200, "ok"},
		{"/readyz", false, 503, "informers: not synced yet"},
		{"/readyz", true, 200, "ok"},
		{"/metrics", true, 200, "isthmus_test_total 1"},
		{"/metrics", true, 200, "go_goroutines"},
	}
	for _, tt := range tests {
		synced = tt.synced
		code, body := get(tt.path)
		if code != tt.wantCode || !strings.Contains(body, tt.wantBody) {
			t.Errorf("GET %s (synced=%v) = %d %q, want %d containing %q", tt.path, tt.synced, code, body, tt.wantCode, tt.wantBody)
		}
	}
}

// TestEveryStageIsBounded pins the server's timeouts: each is what keeps
// a slow or idle client from holding a connection open (review L9).
func TestEveryStageIsBounded(t *testing.T) {
	srv := newServer(http.NotFoundHandler())
	for name, d := range map[string]time.Duration{
		"ReadHeaderTimeout": srv.ReadHeaderTimeout,
		"ReadTimeout":       srv.ReadTimeout,
		"WriteTimeout":      srv.WriteTimeout,
		"IdleTimeout":       srv.IdleTimeout,
	} {
		if d <= 0 || d > time.Minute {
			t.Errorf("%s = %v, want a bound of at most a minute", name, d)
		}
	}
}
