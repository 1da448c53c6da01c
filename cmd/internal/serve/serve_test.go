package serve

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

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
