package tunnel

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/isthmus-dev/isthmus/test/netnstest"
)

// TestRoutesInOwnTableLeaveOthersRoutes: the tunnel's routes go in a table
// of its own, consulted by one rule per family, and a route it did not
// create is never replaced or removed. tnl-a's node has a route of its own
// (a blackhole, proto static) for exactly tnl-b's pod range before the
// tunnel starts; the tunnel starts beside it, carries tnl-a's traffic to
// tnl-b (its rule comes before the main table), and on a clean stop
// removes its routes and rules and leaves that route as it was.
func TestRoutesInOwnTableLeaveOthersRoutes(t *testing.T) {
	dumpLogsOnFailure(t)
	a, b := w.members[0], w.members[1]
	foreign := []string{"blackhole", b.podCIDR, "proto", "static"}
	t.Cleanup(func() {
		_, _ = netnstest.Sh(append([]string{"ip", "-n", a.ns, "route", "del"}, foreign...)...)
		if err := w.start(a); err == nil {
			_ = w.waitMeshUp(context.Background(), 20*time.Second)
		}
	})
	if err := a.stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if _, err := netnstest.Sh(append([]string{"ip", "-n", a.ns, "route", "add"}, foreign...)...); err != nil {
		t.Fatal(err)
	}
	foreignHere := func() error {
		out, err := netnstest.Sh("ip", "-n", a.ns, "route", "show", "table", "main", b.podCIDR)
		if err != nil {
			return err
		}
		if !strings.Contains(out, "blackhole "+b.podCIDR) || !strings.Contains(out, "proto static") {
			return fmt.Errorf("the node's own route to %s is not as it was: %q", b.podCIDR, out)
		}
		return nil
	}
	if err := w.start(a); err != nil {
		t.Fatal(err)
	}
	if err := w.waitMeshUp(context.Background(), 30*time.Second); err != nil {
		t.Fatal(err)
	}
	// Two resyncs: full passes have run over the foreign route.
	time.Sleep(2 * resync)
	if err := foreignHere(); err != nil {
		t.Fatal(err)
	}
	routes := routesOf(t, a)
	if !strings.Contains(routes, b.podCIDR+" dev "+a.dev+" table "+routeTable) {
		t.Errorf("no route of ours to %s in table %s:\n%s", b.podCIDR, routeTable, routes)
	}
	if strings.Contains(routes, "table main") || !strings.Contains(routes, "table "+routeTable) {
		t.Errorf("routes of ours outside table %s:\n%s", routeTable, routes)
	}
	for _, fam := range []string{"-4", "-6"} {
		if rules := rulesOf(t, a, fam); !strings.Contains(rules, rulePref+":\tfrom all lookup "+routeTable) {
			t.Errorf("no %s rule 'pref %s lookup %s':\n%s", fam, rulePref, routeTable, rules)
		}
	}
	out, err := netnstest.Sh("ip", "-n", a.ns, "route", "get", b.pod, "from", a.pod)
	if err != nil || !strings.Contains(out, "dev "+a.dev) {
		t.Errorf("tnl-a's route to tnl-b's pod goes %q (%v), not through %s", out, err, a.dev)
	}

	if err := a.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("the daemon did not exit cleanly on SIGTERM: %v", err)
	}
	if routes := routesOf(t, a); strings.TrimSpace(routes) != "" {
		t.Errorf("routes of ours left after the stop:\n%s", routes)
	}
	for _, fam := range []string{"-4", "-6"} {
		if rules := rulesOf(t, a, fam); strings.Contains(rules, "lookup "+routeTable) {
			t.Errorf("%s rule of ours left after the stop:\n%s", fam, rules)
		}
	}
	if err := foreignHere(); err != nil {
		t.Error(err)
	}
}

func rulesOf(t *testing.T, mb *member, family string) string {
	t.Helper()
	out, err := netnstest.Sh("ip", family, "-n", mb.ns, "rule", "show")
	if err != nil {
		t.Fatal(err)
	}
	return out
}
