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
//
// It keeps a model of what it applied (peers and routes), so that a
// change to a few records is applied from the model alone (applyChanges:
// only their peers are configured, only their routes touched), at a cost
// that does not grow with the number of peers. Only the full pass (apply,
// at start and every resync) reads the whole device and routing table; it
// repairs whatever was changed behind the model's back and rebuilds it.
type reconciler struct {
	wg        wgClient
	dev       string
	proto     netlink.RouteProtocol
	table     int
	keepalive time.Duration
	// count, when set, is told of every device and routing-table
	// operation by kind, for the metrics and tests.
	count func(op string)

	// applied is every peer configured on the device, with the endpoint
	// its record named when it was last configured. The device's own
	// endpoint is not compared: WireGuard roams it to wherever the peer's
	// packets come from (a failed-over gateway), and resetting it would
	// undo the failover.
	applied map[wgtypes.Key]appliedPeer
	// routes are our installed routes by destination, with their source.
	routes map[netip.Prefix]netip.Addr
	link   netlink.Link
	src    netip.Addr
}

type appliedPeer struct {
	endpoint netip.AddrPort
	allowed  []netip.Prefix
}

// Device and routing-table operations, as counted.
const (
	opReadDevice   = "read_device"
	opListRoutes   = "list_routes"
	opAddPeer      = "add_peer"
	opUpdatePeer   = "update_peer"
	opRemovePeer   = "remove_peer"
	opReplaceRoute = "replace_route"
	opDeleteRoute  = "delete_route"
)

func newReconciler(wg wgClient, dev string, proto netlink.RouteProtocol, table int, keepalive time.Duration) *reconciler {
	return &reconciler{wg: wg, dev: dev, proto: proto, table: table, keepalive: keepalive,
		applied: map[wgtypes.Key]appliedPeer{}, routes: map[netip.Prefix]netip.Addr{}}
}

func (r *reconciler) op(kind string) {
	if r.count != nil {
		r.count(kind)
	}
}

// configured says whether p is on the device as the plan wants it.
func (r *reconciler) configured(p Peer) bool {
	a, ok := r.applied[p.Key]
	return ok && a.endpoint == p.Endpoint && slices.Equal(a.allowed, p.AllowedIPs)
}

// changes counts what one apply did, for logs and tests.
type changes struct {
	added, updated, removed, routesAdded, routesRemoved int
}

func (c changes) any() bool { return c != changes{} }

// apply is the full pass: it reads the device and our routes and makes
// them match peers, whatever happened to them meanwhile. Stale peers and
// routes are removed only when gc is set, that is once the records have
// been listed in full: before that, a peer missing from a partial view
// would lose its session for nothing.
func (r *reconciler) apply(link netlink.Link, src netip.Addr, peers []Peer, gc bool) (changes, error) {
	var ch changes
	r.link, r.src = link, src
	r.op(opReadDevice)
	d, err := r.wg.Device(r.dev)
	if err != nil {
		return ch, fmt.Errorf("reading device %s: %w", r.dev, err)
	}
	actual := map[wgtypes.Key]wgtypes.Peer{}
	for _, p := range d.Peers {
		actual[p.PublicKey] = p
	}
	// The device is the truth: a peer removed by hand is not applied.
	for k := range r.applied {
		if _, ok := actual[k]; !ok {
			delete(r.applied, k)
		}
	}
	desired := map[wgtypes.Key]bool{}
	var errs []error
	for _, p := range peers {
		desired[p.Key] = true
		have, ok := actual[p.Key]
		if ok && r.configured(p) && have.Endpoint != nil && have.PersistentKeepaliveInterval == r.keepalive && sameAllowed(have.AllowedIPs, p.AllowedIPs) {
			continue
		}
		if !ok {
			delete(r.applied, p.Key)
		}
		if err := r.configure(p, &ch, have.Endpoint == nil); err != nil {
			errs = append(errs, err)
		}
	}

	// Routes after peers on the way in, before them on the way out, so a
	// route never points at a device that would drop its packets.
	want := map[netip.Prefix]bool{}
	for _, p := range peers {
		if !r.configured(p) {
			continue // its peer failed to configure
		}
		for _, pfx := range p.AllowedIPs {
			want[pfx] = true
		}
	}
	have, err := r.listRoutes()
	if err != nil {
		return ch, errors.Join(append(errs, err)...)
	}
	r.routes = map[netip.Prefix]netip.Addr{}
	for pfx, rt := range have {
		if a, ok := netip.AddrFromSlice(rt.Src); ok && rt.LinkIndex == link.Attrs().Index {
			r.routes[pfx] = a.Unmap()
		} else if rt.LinkIndex == link.Attrs().Index && len(rt.Src) == 0 {
			r.routes[pfx] = netip.Addr{}
		}
	}
	for pfx := range want {
		if err := r.ensureRoute(pfx, &ch); err != nil {
			errs = append(errs, err)
		}
	}
	if gc {
		for pfx, rt := range have {
			if want[pfx] {
				continue
			}
			r.op(opDeleteRoute)
			if err := netlink.RouteDel(&rt); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("removing route %s: %w", pfx, err))
				continue
			}
			delete(r.routes, pfx)
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

// applyChanges applies the plan's change for a few clusters from the
// model alone: old are their peers as configured before, new their peers
// now. Nothing else on the device or in the routing table is read or
// written.
func (r *reconciler) applyChanges(old, new []Peer) (changes, error) {
	var ch changes
	var errs []error
	if r.link == nil {
		return ch, errors.New("no full pass has run yet")
	}
	newKeys := map[wgtypes.Key]bool{}
	want := map[netip.Prefix]bool{}
	for _, p := range new {
		newKeys[p.Key] = true
		for _, pfx := range p.AllowedIPs {
			want[pfx] = true
		}
	}
	// Routes of the old peers that no new peer takes go first...
	for _, p := range old {
		for _, pfx := range p.AllowedIPs {
			if _, ok := r.routes[pfx]; ok && !want[pfx] {
				if err := r.deleteRoute(pfx, &ch); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	// ...then the new peers are configured, taking over any allowed IPs
	// of an old peer (a rotated key) before that one is removed...
	for _, p := range new {
		if r.configured(p) {
			continue
		}
		if err := r.configure(p, &ch, false); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range old {
		if newKeys[p.Key] {
			continue
		}
		if _, ok := r.applied[p.Key]; !ok {
			continue
		}
		if err := r.removePeer(p.Key); err != nil {
			errs = append(errs, err)
			continue
		}
		ch.removed++
	}
	// ...and the new routes come last.
	for _, p := range new {
		if !r.configured(p) {
			continue
		}
		for _, pfx := range p.AllowedIPs {
			if err := r.ensureRoute(pfx, &ch); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return ch, errors.Join(errs...)
}

// configure adds p, or updates it in place (UpdateOnly) when it is
// already on the device, keeping its session. The endpoint is set when
// the peer is new, its record names another one, or the device has none.
func (r *reconciler) configure(p Peer, ch *changes, noEndpoint bool) error {
	cfg := wgtypes.PeerConfig{
		PublicKey:                   p.Key,
		PersistentKeepaliveInterval: &r.keepalive,
		ReplaceAllowedIPs:           true,
		AllowedIPs:                  ipNets(p.AllowedIPs),
	}
	a, exists := r.applied[p.Key]
	if !exists || a.endpoint != p.Endpoint || noEndpoint {
		cfg.Endpoint = net.UDPAddrFromAddrPort(p.Endpoint)
	}
	what, op := "adding", opAddPeer
	if exists {
		cfg.UpdateOnly = true
		what, op = "updating", opUpdatePeer
	}
	r.op(op)
	if err := r.wg.ConfigureDevice(r.dev, wgtypes.Config{Peers: []wgtypes.PeerConfig{cfg}}); err != nil {
		// Unknown state: the next full pass reads the device.
		delete(r.applied, p.Key)
		return fmt.Errorf("%s peer %s (%s): %w", what, p.Cluster, p.Key, err)
	}
	r.applied[p.Key] = appliedPeer{endpoint: p.Endpoint, allowed: p.AllowedIPs}
	if exists {
		ch.updated++
	} else {
		ch.added++
	}
	return nil
}

func (r *reconciler) ensureRoute(pfx netip.Prefix, ch *changes) error {
	src := srcFor(pfx, r.src)
	if have, ok := r.routes[pfx]; ok && have == src {
		return nil
	}
	r.op(opReplaceRoute)
	// Only a route of ours is replaced. A new one is added exclusively:
	// the kernel refuses it when a route to the same range, of whatever
	// origin, is there, and that route is left as it is (only the main
	// table can hold one; our own holds nothing of anyone else's).
	add := netlink.RouteReplace
	if _, ours := r.routes[pfx]; !ours {
		add = netlink.RouteAdd
	}
	if err := add(r.route(r.link, pfx, r.src)); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("adding route %s dev %s: table %d already has a route to %s that Isthmus did not create; it is left as it is", pfx, r.dev, r.table, pfx)
		}
		return fmt.Errorf("adding route %s dev %s: %w", pfx, r.dev, err)
	}
	r.routes[pfx] = src
	ch.routesAdded++
	return nil
}

func (r *reconciler) deleteRoute(pfx netip.Prefix, ch *changes) error {
	dst := ipNet(pfx)
	r.op(opDeleteRoute)
	// The scope must be given: the library sends universe otherwise, and
	// the kernel then finds no such route.
	rt := &netlink.Route{LinkIndex: r.link.Attrs().Index, Dst: &dst, Scope: netlink.SCOPE_LINK, Protocol: r.proto, Table: r.table}
	if err := netlink.RouteDel(rt); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("removing route %s: %w", pfx, err)
	}
	delete(r.routes, pfx)
	ch.routesRemoved++
	return nil
}

func (r *reconciler) removePeer(key wgtypes.Key) error {
	r.op(opRemovePeer)
	err := r.wg.ConfigureDevice(r.dev, wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: key, Remove: true}}})
	if err != nil {
		return fmt.Errorf("removing peer %s: %w", key, err)
	}
	delete(r.applied, key)
	return nil
}

// clear removes every route of ours and every peer: the clean shutdown.
func (r *reconciler) clear() error {
	var errs []error
	have, err := r.listRoutes()
	if err != nil {
		errs = append(errs, err)
	}
	for pfx, rt := range have {
		if err := netlink.RouteDel(&rt); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("removing route %s: %w", pfx, err))
		}
	}
	r.routes = map[netip.Prefix]netip.Addr{}
	r.op(opReadDevice)
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

// listRoutes lists the routes carrying our protocol id in our table, by
// destination. The protocol id is how we tell our routes from everyone
// else's, so nothing else is ever touched.
func (r *reconciler) listRoutes() (map[netip.Prefix]netlink.Route, error) {
	r.op(opListRoutes)
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
