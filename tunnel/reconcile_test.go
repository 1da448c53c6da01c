package tunnel

import (
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// fakeWG is a device in memory that records each configuration it gets.
// The real devices are exercised end to end in test/tunnel; this one
// shows exactly which calls a reconcile makes.
type fakeWG struct {
	mu    sync.Mutex
	peers map[wgtypes.Key]wgtypes.Peer
	calls []wgtypes.PeerConfig
	reads int
}

func (f *fakeWG) Device(string) (*wgtypes.Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads++
	d := &wgtypes.Device{}
	for _, p := range f.peers {
		d.Peers = append(d.Peers, p)
	}
	return d, nil
}

func (f *fakeWG) ConfigureDevice(_ string, cfg wgtypes.Config) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if cfg.ReplacePeers {
		return fmt.Errorf("ReplacePeers on a live device")
	}
	for _, pc := range cfg.Peers {
		f.calls = append(f.calls, pc)
		p, ok := f.peers[pc.PublicKey]
		switch {
		case pc.Remove:
			delete(f.peers, pc.PublicKey)
			continue
		case pc.UpdateOnly && !ok:
			continue
		}
		p.PublicKey = pc.PublicKey
		if pc.Endpoint != nil {
			p.Endpoint = pc.Endpoint
		}
		if pc.PersistentKeepaliveInterval != nil {
			p.PersistentKeepaliveInterval = *pc.PersistentKeepaliveInterval
		}
		if pc.ReplaceAllowedIPs {
			p.AllowedIPs = nil
		}
		p.AllowedIPs = append(p.AllowedIPs, pc.AllowedIPs...)
		f.peers[pc.PublicKey] = p
	}
	return nil
}

// inFreshNetns runs the test body on a thread in a new network namespace
// holding a veth pair to route through. The thread is never returned to
// the Go runtime, so the namespace dies with it.
func inFreshNetns(t *testing.T, body func(link netlink.Link)) {
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root to create a network namespace (CI runs as root)")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread is discarded
		ns, err := netns.New()
		if err != nil {
			t.Errorf("creating a network namespace: %v", err)
			return
		}
		defer ns.Close()
		attrs := netlink.NewLinkAttrs()
		attrs.Name = "tnlut0"
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "tnlut1"}); err != nil {
			t.Errorf("adding a veth: %v", err)
			return
		}
		link, err := linkUp("tnlut0", net.ParseIP("10.1.255.254"))
		if err != nil {
			t.Error(err)
			return
		}
		body(link)
	}()
	<-done
}

func TestReconcileByDifference(t *testing.T) {
	inFreshNetns(t, func(link netlink.Link) {
		fake := &fakeWG{peers: map[wgtypes.Key]wgtypes.Peer{}}
		r := newReconciler(fake, "tnlut0", 158, 254, 10*time.Second)
		src := netip.MustParseAddr("10.1.255.254")
		kb, kc := key(t), key(t)
		b := Peer{Cluster: "b", Key: kb, Endpoint: netip.MustParseAddrPort("192.0.2.2:51820"), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16")}}
		c := Peer{Cluster: "c", Key: kc, Endpoint: netip.MustParseAddrPort("192.0.2.3:51820"), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.3.0.0/16")}}
		// A route that is not ours must survive everything.
		foreign := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: &net.IPNet{IP: net.ParseIP("10.77.0.0"), Mask: net.CIDRMask(16, 32)}, Protocol: 4}
		if err := netlink.RouteAdd(foreign); err != nil {
			t.Fatal(err)
		}

		check := func(step string, got changes, want changes, wantRoutes ...string) {
			t.Helper()
			if got != want {
				t.Errorf("%s: changes %+v, want %+v", step, got, want)
			}
			have, err := r.listRoutes()
			if err != nil {
				t.Fatal(err)
			}
			var dsts []string
			for p, rt := range have {
				dsts = append(dsts, p.String())
				if !srcMatches(rt.Src, src) || rt.Scope != netlink.SCOPE_LINK {
					t.Errorf("%s: route %s has src %s scope %d", step, p, rt.Src, rt.Scope)
				}
			}
			slices.Sort(dsts)
			if !slices.Equal(dsts, wantRoutes) {
				t.Errorf("%s: our routes %v, want %v", step, dsts, wantRoutes)
			}
		}

		ch, err := r.apply(link, src, []Peer{b, c}, true)
		if err != nil {
			t.Fatal(err)
		}
		check("add", ch, changes{added: 2, routesAdded: 2}, "10.2.0.0/16", "10.3.0.0/16")

		ch, _ = r.apply(link, src, []Peer{b, c}, true)
		check("no change", ch, changes{}, "10.2.0.0/16", "10.3.0.0/16")

		// The device roams b's endpoint to a failed-over gateway; the
		// record did not change, so the reconciler must leave it.
		fake.mu.Lock()
		pb := fake.peers[kb]
		pb.Endpoint = &net.UDPAddr{IP: net.ParseIP("198.51.100.2"), Port: 51820}
		fake.peers[kb] = pb
		fake.mu.Unlock()
		ch, _ = r.apply(link, src, []Peer{b, c}, true)
		check("roamed", ch, changes{}, "10.2.0.0/16", "10.3.0.0/16")

		// One CIDR more for c: one UpdateOnly call for c alone.
		fake.calls = nil
		c.AllowedIPs = append(c.AllowedIPs, netip.MustParsePrefix("10.93.0.0/16"))
		ch, _ = r.apply(link, src, []Peer{b, c}, true)
		check("update c", ch, changes{updated: 1, routesAdded: 1}, "10.2.0.0/16", "10.3.0.0/16", "10.93.0.0/16")
		if len(fake.calls) != 1 || fake.calls[0].PublicKey != kc || !fake.calls[0].UpdateOnly || fake.calls[0].Endpoint != nil {
			t.Errorf("update c made calls %+v, want one UpdateOnly for c without an endpoint", fake.calls)
		}

		// b's record disappears before a full listing: nothing is removed.
		ch, _ = r.apply(link, src, []Peer{c}, false)
		check("partial view", ch, changes{}, "10.2.0.0/16", "10.3.0.0/16", "10.93.0.0/16")
		if _, ok := fake.peers[kb]; !ok {
			t.Error("b was removed before the records were fully listed")
		}
		ch, _ = r.apply(link, src, []Peer{c}, true)
		check("gc", ch, changes{removed: 1, routesRemoved: 1}, "10.3.0.0/16", "10.93.0.0/16")

		// A route deleted by hand comes back on the next pass.
		dst := ipNet(netip.MustParsePrefix("10.3.0.0/16"))
		if err := netlink.RouteDel(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: &dst, Table: 254, Scope: netlink.SCOPE_LINK}); err != nil {
			t.Fatal(err)
		}
		ch, _ = r.apply(link, src, []Peer{c}, true)
		check("repair", ch, changes{routesAdded: 1}, "10.3.0.0/16", "10.93.0.0/16")

		if err := r.clear(); err != nil {
			t.Fatal(err)
		}
		if len(fake.peers) != 0 {
			t.Errorf("clear left peers %v", fake.peers)
		}
		have, _ := r.listRoutes()
		if len(have) != 0 {
			t.Errorf("clear left routes %v", have)
		}
		all, _ := netlink.RouteList(link, netlink.FAMILY_V4)
		if !slices.ContainsFunc(all, func(rt netlink.Route) bool { return rt.Dst != nil && rt.Dst.String() == "10.77.0.0/16" }) {
			t.Error("a route that is not ours was removed")
		}
	})
}

// TestChangeAppliesOnlyItsOwnPeer: with 200 peers on the device, a change
// pass for one cluster (new CIDRs, then a rotated key, then its removal)
// reads neither the device nor the routing table and configures only that
// cluster's peer and routes; a full pass afterwards finds nothing to do,
// so the model matched the device and the routing table.
func TestChangeAppliesOnlyItsOwnPeer(t *testing.T) {
	inFreshNetns(t, func(link netlink.Link) {
		fake := &fakeWG{peers: map[wgtypes.Key]wgtypes.Peer{}}
		r := newReconciler(fake, "tnlut0", 158, 254, 10*time.Second)
		ops := map[string]int{}
		r.count = func(op string) { ops[op]++ }
		src := netip.MustParseAddr("10.1.255.254")
		var peers []Peer
		for i := range 200 {
			peers = append(peers, Peer{Cluster: fmt.Sprintf("c%d", i), Key: key(t), Endpoint: netip.MustParseAddrPort("192.0.2.2:51820"),
				AllowedIPs: []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("10.%d.%d.0/24", 64+i/256, i%256))}})
		}
		if _, err := r.apply(link, src, peers, true); err != nil {
			t.Fatal(err)
		}
		step := func(name string, old, next []Peer, want changes, wantOps map[string]int) {
			t.Helper()
			clear(ops)
			fake.calls, fake.reads = nil, 0
			ch, err := r.applyChanges(old, next)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if ch != want {
				t.Errorf("%s: changes %+v, want %+v", name, ch, want)
			}
			if fake.reads != 0 || ops[opReadDevice] != 0 || ops[opListRoutes] != 0 {
				t.Errorf("%s: read the device %d times and listed routes %d times, want neither", name, fake.reads, ops[opListRoutes])
			}
			if !maps.Equal(ops, wantOps) {
				t.Errorf("%s: operations %v, want %v", name, ops, wantOps)
			}
			for _, c := range fake.calls {
				if c.PublicKey != old0(old).Key && (len(next) == 0 || c.PublicKey != next[0].Key) {
					t.Errorf("%s: configured peer %s, which did not change", name, c.PublicKey)
				}
			}
			// A full pass must find the device and routes as the model says.
			clear(ops)
			ch, err = r.apply(link, src, append(slices.Clone(peers[1:]), next...), true)
			if err != nil || ch.any() {
				t.Errorf("%s: the full pass after it changed %+v (%v): the model and the device disagreed", name, ch, err)
			}
		}
		c0 := peers[0]
		wider := c0
		wider.AllowedIPs = []netip.Prefix{c0.AllowedIPs[0], netip.MustParsePrefix("172.31.0.0/16")}
		step("new CIDR", []Peer{c0}, []Peer{wider}, changes{updated: 1, routesAdded: 1},
			map[string]int{opUpdatePeer: 1, opReplaceRoute: 1})
		rotated := wider
		rotated.Key = key(t)
		step("rotated key", []Peer{wider}, []Peer{rotated}, changes{added: 1, removed: 1},
			map[string]int{opAddPeer: 1, opRemovePeer: 1})
		if _, ok := fake.peers[wider.Key]; ok {
			t.Error("the old key is still a peer")
		}
		step("removed", []Peer{rotated}, nil, changes{removed: 1, routesRemoved: 2},
			map[string]int{opRemovePeer: 1, opDeleteRoute: 2})
		if len(fake.peers) != 199 {
			t.Errorf("%d peers left, want 199", len(fake.peers))
		}
	})
}

func old0(ps []Peer) Peer {
	if len(ps) == 0 {
		return Peer{}
	}
	return ps[0]
}

// srcMatches says whether a route's source (nil for none) is want (the
// zero Addr for none).
func srcMatches(have net.IP, want netip.Addr) bool {
	a, ok := netip.AddrFromSlice(have)
	if !want.IsValid() {
		return !ok
	}
	return ok && a.Unmap() == want
}

// TestReconcileDualStack: a dual-stack peer's IPv6 ranges get a peer
// AllowedIP and a route each beside its IPv4 ones, the IPv6 routes with no
// source (the tunnel address is IPv4, and an IPv4 source on an IPv6 route
// is refused); a second pass finds them all in place and changes nothing.
func TestReconcileDualStack(t *testing.T) {
	inFreshNetns(t, func(link netlink.Link) {
		fake := &fakeWG{peers: map[wgtypes.Key]wgtypes.Peer{}}
		r := newReconciler(fake, "tnlut0", 158, 254, 10*time.Second)
		src := netip.MustParseAddr("10.1.255.254")
		kb := key(t)
		b := Peer{Cluster: "b", Key: kb, Endpoint: netip.MustParseAddrPort("192.0.2.2:51820"), AllowedIPs: []netip.Prefix{
			netip.MustParsePrefix("10.242.0.0/16"), netip.MustParsePrefix("fd00:244:2::/56"), netip.MustParsePrefix("fd00:96:2::/112")}}
		slices.SortFunc(b.AllowedIPs, comparePrefix) // as Plan gives them
		for _, step := range []struct {
			name string
			want changes
		}{{"add", changes{added: 1, routesAdded: 3}}, {"again", changes{}}} {
			ch, err := r.apply(link, src, []Peer{b}, true)
			if err != nil {
				t.Fatalf("%s: %v", step.name, err)
			}
			if ch != step.want {
				t.Errorf("%s: changes %+v, want %+v", step.name, ch, step.want)
			}
		}
		have, err := r.listRoutes()
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range b.AllowedIPs {
			rt, ok := have[p]
			wantSrc := src
			if p.Addr().Is6() {
				wantSrc = netip.Addr{}
			}
			if !ok || !srcMatches(rt.Src, wantSrc) {
				t.Errorf("route %s: %v (present %v), want src %v", p, rt, ok, wantSrc)
			}
		}
		fake.mu.Lock()
		got := fake.peers[kb].AllowedIPs
		fake.mu.Unlock()
		if len(got) != len(b.AllowedIPs) {
			t.Errorf("peer b's AllowedIPs %v, want %v", got, b.AllowedIPs)
		}
	})
}
