package install

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
)

// The package's tests share one installed clusterset, started by the first
// test that asks and stopped after the last: a clusterset of two members
// on real nodes costs a minute of a 2-core machine's CPU to start, and
// TestUpgradeKeepsTraffic (which changes the installation) runs after
// TestInstallOnRealNodes (which checks it as installed) in file order.
var shared struct {
	once sync.Once
	set  *Set
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.set != nil {
		shared.set.Stop()
	}
	os.Exit(code)
}

// sharedSet is the README's install on two members with real nodes, with
// the chart's defaults. Its progress goes to standard error (shown for a
// failing package, or with -v); the steps' timings stay in its Timings.
func sharedSet(t *testing.T) *Set {
	t.Helper()
	shared.once.Do(func() {
		logf := func(format string, args ...any) { fmt.Fprintf(os.Stderr, "install: "+format+"\n", args...) }
		shared.set, shared.err = New(context.Background(), Options{Members: 2, Log: logf,
			ClusterLog: slog.New(slog.NewTextHandler(os.Stderr, nil))})
		if shared.err != nil && shared.set != nil && shared.set.Clusterset != nil {
			shared.set.Stop()
			shared.set = nil
		}
	})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.set
}
