package source

import (
	"fmt"
	"net/netip"

	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/isthmus-dev/isthmus/xds/model"
)

// endpointsOf reads one MCS EndpointSlice. A nil ready condition means
// ready, as the EndpointSlice API defines.
func endpointsOf(sl *discoveryv1.EndpointSlice) []model.Endpoint {
	ports := map[string]int32{}
	for _, p := range sl.Ports {
		if p.Port == nil {
			continue
		}
		name := ""
		if p.Name != nil {
			name = *p.Name
		}
		ports[name] = *p.Port
	}
	var out []model.Endpoint
	for _, e := range sl.Endpoints {
		ready := e.Conditions.Ready == nil || *e.Conditions.Ready
		zone := ""
		if e.Zone != nil {
			zone = *e.Zone
		}
		for _, a := range e.Addresses {
			addr, err := netip.ParseAddr(a)
			if err != nil {
				continue
			}
			out = append(out, model.Endpoint{Address: addr, Ports: ports, Ready: ready, Zone: zone})
		}
	}
	return out
}

func parseAddrPort(addr string, port int32) (netip.AddrPort, error) {
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("gateway address %q: %w", addr, err)
	}
	if port <= 0 || port > 65535 {
		return netip.AddrPort{}, fmt.Errorf("gateway port %d is not a port", port)
	}
	return netip.AddrPortFrom(a, uint16(port)), nil
}

func isNotFound(err error) bool { return apierrors.IsNotFound(err) }
