package cluster

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"
)

// deadlineMargin is how long before a test binary's -timeout the harness
// stops itself, so that a timed-out run still leaves nothing behind.
const deadlineMargin = 20 * time.Second

// Start starts a clusterset for one test and stops it when the test ends,
// or shortly before the test binary's deadline if that comes first. A
// clusterset that cannot start fails the test with the failing binary's
// last log lines.
func Start(tb testing.TB, opts Options) *Clusterset {
	tb.Helper()
	if opts.Log == nil {
		opts.Log = slog.New(slog.NewTextHandler(testWriter{tb}, nil))
	}
	cs, err := New(context.Background(), opts)
	if err != nil {
		tb.Fatalf("starting clusterset: %v", err)
	}
	tb.Cleanup(cs.Stop)
	if d, ok := tb.(interface{ Deadline() (time.Time, bool) }); ok {
		if deadline, ok := d.Deadline(); ok {
			cs.stopAt(deadline.Add(-deadlineMargin))
		}
	}
	return cs
}

// Main runs a test binary's tests against one clusterset shared by all of
// them, the way TestMain would: it starts the clusterset, stores it in *cs,
// runs the tests, stops it and exits. The clusterset is also stopped on
// SIGINT or SIGTERM and shortly before the -test.timeout deadline.
//
//	var clusters *cluster.Clusterset
//	func TestMain(m *testing.M) { cluster.Main(m, cluster.Options{Members: 2, Broker: true}, &clusters) }
func Main(m *testing.M, opts Options, cs **Clusterset) {
	flag.Parse()
	began := time.Now()
	if opts.Log == nil {
		opts.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	c, err := New(context.Background(), opts)
	if err != nil {
		fmt.Fprintf(os.Stderr, "starting clusterset: %v\n", err)
		os.Exit(1)
	}
	*cs = c
	if f := flag.Lookup("test.timeout"); f != nil {
		if timeout, ok := f.Value.(flag.Getter).Get().(time.Duration); ok && timeout > 0 {
			c.stopAt(began.Add(timeout - deadlineMargin))
		}
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-sigs
		c.log.Warn("stopping clusterset on signal", "signal", sig)
		c.Stop()
		os.Exit(1)
	}()
	code := m.Run()
	c.Stop()
	os.Exit(code)
}

// stopAt stops the clusterset at t unless it has stopped by then.
func (cs *Clusterset) stopAt(t time.Time) {
	cs.timersMu.Lock()
	defer cs.timersMu.Unlock()
	cs.timers = append(cs.timers, time.AfterFunc(time.Until(t), func() {
		cs.log.Warn("stopping clusterset before the test binary's deadline")
		cs.Stop()
	}))
}

// testWriter sends the harness's log lines to the test's log.
type testWriter struct{ tb testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.tb.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
