package agent

import (
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

func TestTakeEndpoints(t *testing.T) {
	pods := []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16"), netip.MustParsePrefix("fd00:2::/48")}
	yes, node, host, badHost := true, "node-of-b", "web-0", "Not_A_Label"
	tcp, port := corev1.ProtocolTCP, int32(80)
	ep := func(addr string) discoveryv1.Endpoint {
		return discoveryv1.Endpoint{Addresses: []string{addr}, Conditions: discoveryv1.EndpointConditions{Ready: &yes}}
	}
	many := &discoveryv1.EndpointSlice{AddressType: discoveryv1.AddressTypeIPv4}
	for i := range maxEndpointsPerCluster + 3 {
		many.Endpoints = append(many.Endpoints, ep(fmt.Sprintf("10.2.%d.%d", i/250, i%250+1)))
	}
	tests := []struct {
		name    string
		src     []*discoveryv1.EndpointSlice
		want    []*discoveryv1.EndpointSlice
		refused string // a part of the report; "" for none
	}{
		{
			name: "inside the pod ranges, with only the allowed fields",
			src: []*discoveryv1.EndpointSlice{{AddressType: discoveryv1.AddressTypeIPv4,
				Ports: []discoveryv1.EndpointPort{{Port: &port, Protocol: &tcp}},
				Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.2.0.5"}, Conditions: discoveryv1.EndpointConditions{Ready: &yes},
					Hostname: &host, Zone: &node, NodeName: &node, TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: "x"},
					Hints: &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: "z"}}}}}}},
			want: []*discoveryv1.EndpointSlice{{AddressType: discoveryv1.AddressTypeIPv4,
				Ports:     []discoveryv1.EndpointPort{{Port: &port, Protocol: &tcp}},
				Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.2.0.5"}, Conditions: discoveryv1.EndpointConditions{Ready: &yes}, Hostname: &host, Zone: &node}}}},
		},
		{
			name:    "the endpoint injection: an address in no range the member claims",
			src:     []*discoveryv1.EndpointSlice{{AddressType: discoveryv1.AddressTypeIPv4, Endpoints: []discoveryv1.Endpoint{ep("10.2.0.5"), ep("198.51.100.7")}}},
			want:    []*discoveryv1.EndpointSlice{{AddressType: discoveryv1.AddressTypeIPv4, Endpoints: []discoveryv1.Endpoint{ep("10.2.0.5")}}},
			refused: "outside its pod CIDRs [10.2.0.0/16 fd00:2::/48]: [198.51.100.7]",
		},
		{
			name:    "a family that does not match the slice, and a non-canonical address",
			src:     []*discoveryv1.EndpointSlice{{AddressType: discoveryv1.AddressTypeIPv4, Endpoints: []discoveryv1.Endpoint{ep("fd00:2::5"), ep("010.2.0.5"), ep("::ffff:10.2.0.5")}}},
			refused: "outside its pod CIDRs",
		},
		{
			name: "IPv6 inside",
			src:  []*discoveryv1.EndpointSlice{{AddressType: discoveryv1.AddressTypeIPv6, Endpoints: []discoveryv1.Endpoint{ep("fd00:2::5")}}},
			want: []*discoveryv1.EndpointSlice{{AddressType: discoveryv1.AddressTypeIPv6, Endpoints: []discoveryv1.Endpoint{ep("fd00:2::5")}}},
		},
		{
			name:    "FQDN slices are not imported",
			src:     []*discoveryv1.EndpointSlice{{AddressType: discoveryv1.AddressTypeFQDN, Endpoints: []discoveryv1.Endpoint{ep("evil.example.com")}}},
			refused: "address type FQDN",
		},
		{
			name: "a hostname DNS cannot serve is dropped, the endpoint kept",
			src: []*discoveryv1.EndpointSlice{{AddressType: discoveryv1.AddressTypeIPv4,
				Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.2.0.6"}, Hostname: &badHost}}}},
			want: []*discoveryv1.EndpointSlice{{AddressType: discoveryv1.AddressTypeIPv4, Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.2.0.6"}}}}},
		},
		{
			name:    "over the per-cluster limit",
			src:     []*discoveryv1.EndpointSlice{many},
			want:    []*discoveryv1.EndpointSlice{{AddressType: discoveryv1.AddressTypeIPv4, Endpoints: many.Endpoints[:maxEndpointsPerCluster]}},
			refused: "3 endpoints over the limit",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, refused := takeEndpoints("b", tc.src, pods)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("took %+v\nwant %+v", got, tc.want)
			}
			report := strings.Join(refused, "; ")
			if (tc.refused == "") != (report == "") || !strings.Contains(report, tc.refused) {
				t.Errorf("refused %q; want %q", report, tc.refused)
			}
		})
	}
}

// FuzzTakeEndpoints: whatever addresses and hostnames another member puts
// in its slices, what the importer takes lies inside the member's pod
// CIDRs, matches the slice's family, and carries no node name.
func FuzzTakeEndpoints(f *testing.F) {
	for _, s := range []string{"10.2.0.5", "198.51.100.7", "fd00:2::5", "::ffff:10.2.0.5", "010.2.0.5", "10.2.0.5%eth0", ""} {
		f.Add(s, "web-0", true)
	}
	pods := []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16"), netip.MustParsePrefix("fd00:2::/48")}
	f.Fuzz(func(t *testing.T, addr, host string, v4 bool) {
		family := discoveryv1.AddressTypeIPv6
		if v4 {
			family = discoveryv1.AddressTypeIPv4
		}
		node := "node-of-b"
		src := []*discoveryv1.EndpointSlice{{AddressType: family, Endpoints: []discoveryv1.Endpoint{{Addresses: []string{addr}, Hostname: &host, NodeName: &node}}}}
		out, _ := takeEndpoints("b", src, pods)
		for _, s := range out {
			for _, e := range s.Endpoints {
				if e.NodeName != nil || e.TargetRef != nil || e.Hints != nil {
					t.Errorf("foreign fields crossed: %+v", e)
				}
				for _, a := range e.Addresses {
					ip, err := netip.ParseAddr(a)
					if err != nil || ip.Is4() != v4 || !(pods[0].Contains(ip) || pods[1].Contains(ip)) {
						t.Errorf("took %q for a %s slice", a, family)
					}
				}
			}
		}
	})
}
