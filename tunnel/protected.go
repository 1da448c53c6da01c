package tunnel

import (
	"net/netip"

	"github.com/vishvananda/netlink"
)

// nodeNetworks are the networks this node's own interfaces sit on (every
// address's prefix, the tunnel device's own excluded): no peer may claim
// them, or the tunnel's own underlay traffic, this node's other networks
// and the broker reached through them would be routed into a tunnel.
// Plan refuses such claims (brokerv1.CheckClaim's protected ranges).
func nodeNetworks(tunnelDevice string) ([]netip.Prefix, error) {
	skip := -1
	if l, err := netlink.LinkByName(tunnelDevice); err == nil {
		skip = l.Attrs().Index
	}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	var out []netip.Prefix
	for _, a := range addrs {
		if a.LinkIndex == skip || a.IPNet == nil {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ones, _ := a.Mask.Size()
		ip = ip.Unmap()
		if ip.IsLinkLocalUnicast() || ip.IsLoopback() {
			continue // never claimable anyway (the broker refuses them)
		}
		out = append(out, netip.PrefixFrom(ip, ones).Masked())
	}
	return out, nil
}
