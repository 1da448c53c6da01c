package tunnel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// wgClient is the part of wgctrl the reconciler uses; it drives kernel and
// userspace devices alike.
type wgClient interface {
	Device(name string) (*wgtypes.Device, error)
	ConfigureDevice(name string, cfg wgtypes.Config) error
}

// reconciler brings a device's peers and our routes to a plan by
// difference: it adds, updates and removes single peers and never replaces
// all peers, because wireguard-go's replace_peers drops every session.
type reconciler struct {
	wg        wgClient
	dev       string
	proto     netlink.RouteProtocol
	table     int
	keepalive time.Duration
	// advertised is the endpoint each peer's record named when the peer
	// was last configured. The device's own endpoint is not compared:
	// WireGuard roams it to wherever the peer's packets come from (a
	// failed-over gateway), and resetting it would undo the failover.
	advertised map[wgtypes.Key]netip.AddrPort
}

// changes counts what one apply did, for logs and tests.
type changes struct {
	added, updated, removed, routesAdded, routesRemoved int
}

func (c changes) any() bool { return c != changes{} }

// apply makes the device and the routing table match peers. Stale peers
// and routes are removed only when gc is set, that is once the records
// have been listed in full: before that, a peer missing from a partial
// view would lose its session for nothing.
func (r *reconciler) apply(link netlink.Link, src netip.Addr, peers []Peer, gc bool) (changes, error) {
	var ch changes
	d, err := r.wg.Device(r.dev)
	if err != nil {
		return ch, fmt.Errorf("reading device %s: %w", r.dev, err)
	}
	actual := map[wgtypes.Key]wgtypes.Peer{}
	for _, p := range d.Peers {
		actual[p.PublicKey] = p
	}
	desired := map[wgtypes.Key]bool{}
	var errs []error
	for _, p := range peers {
		desired[p.Key] = true
		cfg := wgtypes.PeerConfig{
			PublicKey:                   p.Key,
			PersistentKeepaliveInterval: &r.keepalive,
			ReplaceAllowedIPs:           true,
			AllowedIPs:                  ipNets(p.AllowedIPs),
		}
		have, ok := actual[p.Key]
		switch {
		case !ok:
			cfg.Endpoint = net.UDPAddrFromAddrPort(p.Endpoint)
			if err := r.wg.ConfigureDevice(r.dev, wgtypes.Config{Peers: []wgtypes.PeerConfig{cfg}}); err != nil {
				errs = append(errs, fmt.Errorf("adding peer %s (%s): %w", p.Cluster, p.Key, err))
				continue
			}
			r.advertised[p.Key] = p.Endpoint
			ch.added++
		default:
			endpointChanged := r.advertised[p.Key] != p.Endpoint || have.Endpoint == nil
			if !endpointChanged && have.PersistentKeepaliveInterval == r.keepalive && sameAllowed(have.AllowedIPs, p.AllowedIPs) {
				continue
			}
			cfg.UpdateOnly = true
			if endpointChanged {
				cfg.Endpoint = net.UDPAddrFromAddrPort(p.Endpoint)
			}
			if err := r.wg.ConfigureDevice(r.dev, wgtypes.Config{Peers: []wgtypes.PeerConfig{cfg}}); err != nil {
				errs = append(errs, fmt.Errorf("updating peer %s (%s): %w", p.Cluster, p.Key, err))
				continue
			}
			r.advertised[p.Key] = p.Endpoint
			ch.updated++
		}
	}

	// Routes after peers on the way in, before them on the way out, so a
	// route never points at a device that would drop its packets.
	want := map[netip.Prefix]bool{}
	for _, p := range peers {
		if _, ok := r.advertised[p.Key]; !ok {
			continue // its peer failed to configure
		}
		for _, pfx := range p.AllowedIPs {
			want[pfx] = true
		}
	}
	have, err := r.routes()
	if err != nil {
		return ch, errors.Join(append(errs, err)...)
	}
	for pfx := range want {
		if rt, ok := have[pfx]; ok && rt.LinkIndex == link.Attrs().Index && srcMatches(rt.Src, srcFor(pfx, src)) {
			continue
		}
		if err := netlink.RouteReplace(r.route(link, pfx, src)); err != nil {
			errs = append(errs, fmt.Errorf("adding route %s dev %s: %w", pfx, r.dev, err))
			continue
		}
		ch.routesAdded++
	}
	if gc {
		for pfx, rt := range have {
			if want[pfx] {
				continue
			}
			if err := netlink.RouteDel(&rt); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("removing route %s: %w", pfx, err))
				continue
			}
			ch.routesRemoved++
		}
		for key := range actual {
			if desired[key] {
				continue
			}
			if err := r.removePeer(key); err != nil {
				errs = append(errs, err)
				continue
			}
			ch.removed++
		}
	}
	return ch, errors.Join(errs...)
}

func (r *reconciler) removePeer(key wgtypes.Key) error {
	err := r.wg.ConfigureDevice(r.dev, wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: key, Remove: true}}})
	if err != nil {
		return fmt.Errorf("removing peer %s: %w", key, err)
	}
	delete(r.advertised, key)
	return nil
}

// clear removes every route of ours and every peer: the clean shutdown.
func (r *reconciler) clear() error {
	var errs []error
	have, err := r.routes()
	if err != nil {
		errs = append(errs, err)
	}
	for pfx, rt := range have {
		if err := netlink.RouteDel(&rt); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("removing route %s: %w", pfx, err))
		}
	}
	d, err := r.wg.Device(r.dev)
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("reading device %s: %w", r.dev, err))...)
	}
	for _, p := range d.Peers {
		if err := r.removePeer(p.PublicKey); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// routes lists the routes carrying our protocol id in our table, by
// destination. The protocol id is how we tell our routes from everyone
// else's, so nothing else is ever touched.
func (r *reconciler) routes() (map[netip.Prefix]netlink.Route, error) {
	filter := &netlink.Route{Table: r.table, Protocol: r.proto}
	rts, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return nil, fmt.Errorf("listing routes of protocol %d in table %d: %w", r.proto, r.table, err)
	}
	out := map[netip.Prefix]netlink.Route{}
	for _, rt := range rts {
		if rt.Dst == nil {
			continue
		}
		if pfx, ok := prefixOf(*rt.Dst); ok {
			out[pfx] = rt
		}
	}
	return out, nil
}

func (r *reconciler) route(link netlink.Link, pfx netip.Prefix, src netip.Addr) *netlink.Route {
	dst := ipNet(pfx)
	rt := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: &dst, Scope: netlink.SCOPE_LINK, Protocol: r.proto, Table: r.table}
	if s := srcFor(pfx, src); s.IsValid() {
		rt.Src = s.AsSlice()
	}
	return rt
}

// srcFor is the source address for routes to pfx: the tunnel address
// when it is of the same family, else none.
func srcFor(pfx netip.Prefix, src netip.Addr) netip.Addr {
	if src.IsValid() && src.Is4() == pfx.Addr().Is4() {
		return src
	}
	return netip.Addr{}
}

func srcMatches(have net.IP, want netip.Addr) bool {
	a, ok := netip.AddrFromSlice(have)
	if !want.IsValid() {
		return !ok
	}
	return ok && a.Unmap() == want
}

func sameAllowed(have []net.IPNet, want []netip.Prefix) bool {
	got := make([]netip.Prefix, 0, len(have))
	for _, n := range have {
		if p, ok := prefixOf(n); ok {
			got = append(got, p)
		}
	}
	slices.SortFunc(got, comparePrefix)
	return slices.Equal(got, want)
}

func prefixOf(n net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones).Masked(), true
}

func ipNet(p netip.Prefix) net.IPNet {
	return net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func ipNets(ps []netip.Prefix) []net.IPNet {
	out := make([]net.IPNet, len(ps))
	for i, p := range ps {
		out[i] = ipNet(p)
	}
	return out
}
