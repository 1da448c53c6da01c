package tunnel

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// TestRoutesNeverReplaceOthers: in the main table, a route the node
// already has for a peer's range is reported and left as it is (not
// replaced, not removed on clear); in a table of our own the same peer's
// route goes in beside it, with one rule per family that clear's
// companion removeRules takes away again, and routes of ours an earlier
// version left in the main table are cleaned up. test/tunnel shows the
// same with the real daemon and traffic.
func TestRoutesNeverReplaceOthers(t *testing.T) {
	inFreshNetns(t, func(link netlink.Link) {
		src := netip.MustParseAddr("10.1.255.254")
		b := Peer{Cluster: "b", Key: key(t), Endpoint: netip.MustParseAddrPort("192.0.2.2:51820"), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16")}}
		theirs := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: &net.IPNet{IP: net.ParseIP("10.2.0.0"), Mask: net.CIDRMask(16, 32)},
			Protocol: 4, Table: MainTable} // proto static
		if err := netlink.RouteAdd(theirs); err != nil {
			t.Fatal(err)
		}
		theirsIntact := func(step string) {
			t.Helper()
			rts, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: MainTable, Dst: theirs.Dst}, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_DST)
			if err != nil || len(rts) != 1 || rts[0].Protocol != 4 {
				t.Errorf("%s: the node's own route to 10.2.0.0/16 is now %+v (%v)", step, rts, err)
			}
		}

		main := newReconciler(&fakeWG{peers: map[wgtypes.Key]wgtypes.Peer{}}, "tnlut0", 158, MainTable, 10*time.Second)
		if err := main.ensureRules(DefaultRulePriority, link); err != nil {
			t.Fatal(err)
		}
		_, err := main.apply(link, src, []Peer{b}, true)
		if err == nil || !strings.Contains(err.Error(), "did not create") {
			t.Errorf("applying a peer over the node's own route in the main table: %v, want it reported", err)
		}
		theirsIntact("main table, apply")
		if err := main.clear(); err != nil {
			t.Fatal(err)
		}
		theirsIntact("main table, clear")
		if rules := ourRules(t, 51820); rules != 0 {
			t.Errorf("%d rules with the main table, want none", rules)
		}

		// A route of ours an earlier version left in the main table.
		left := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: &net.IPNet{IP: net.ParseIP("10.9.0.0"), Mask: net.CIDRMask(16, 32)},
			Protocol: 158, Table: MainTable, Scope: netlink.SCOPE_LINK}
		if err := netlink.RouteAdd(left); err != nil {
			t.Fatal(err)
		}
		own := newReconciler(&fakeWG{peers: map[wgtypes.Key]wgtypes.Peer{}}, "tnlut0", 158, DefaultRouteTable, 10*time.Second)
		for range 2 { // twice: the second pass adds nothing
			if err := own.ensureRules(DefaultRulePriority, link); err != nil {
				t.Fatal(err)
			}
		}
		if rules := ourRules(t, DefaultRouteTable); rules != 2 {
			t.Errorf("%d rules for table %d, want one per family", rules, DefaultRouteTable)
		}
		if rts, _ := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: MainTable, Protocol: 158}, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL); len(rts) != 0 {
			t.Errorf("routes of ours left in the main table: %+v", rts)
		}
		if _, err := own.apply(link, src, []Peer{b}, true); err != nil {
			t.Fatalf("applying the peer in our own table: %v", err)
		}
		if have, _ := own.listRoutes(); len(have) != 1 {
			t.Errorf("our table holds %v, want the route to 10.2.0.0/16", have)
		}
		theirsIntact("own table, apply")
		if err := own.clear(); err != nil {
			t.Fatal(err)
		}
		if err := own.removeRules(DefaultRulePriority); err != nil {
			t.Fatal(err)
		}
		if rules := ourRules(t, DefaultRouteTable); rules != 0 {
			t.Errorf("%d rules left after removeRules", rules)
		}
		theirsIntact("own table, clear")
	})
}

// ourRules counts the rules, of both families, that consult table.
func ourRules(t *testing.T, table int) int {
	t.Helper()
	n := 0
	for _, fam := range ruleFamilies {
		rules, err := netlink.RuleList(fam)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rules {
			if r.Table == table {
				n++
			}
		}
	}
	return n
}

func TestCheckTable(t *testing.T) {
	for _, tc := range []struct {
		table, priority int
		ok              bool
	}{
		{DefaultRouteTable, DefaultRulePriority, true},
		{MainTable, 0, true},
		{253, 100, false},
		{255, 100, false},
		{0, 100, false},
		{DefaultRouteTable, 0, false},
		{DefaultRouteTable, 32766, false},
	} {
		if err := checkTable(tc.table, tc.priority); (err == nil) != tc.ok {
			t.Errorf("checkTable(%d, %d) = %v, want ok %v", tc.table, tc.priority, err, tc.ok)
		}
	}
}
