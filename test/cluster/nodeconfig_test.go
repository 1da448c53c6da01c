package cluster

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"testing"
)

// TestCNIConfig pins the bridge network a real node's pods get: an
// address range and a default route per family of the node's pod CIDRs,
// in their order, so a dual-stack node's pods get an address of each
// family with the IPv4 one primary.
func TestCNIConfig(t *testing.T) {
	for _, tc := range []struct {
		name           string
		cidrs          []string
		subnets, dests []string
	}{
		{"IPv4", []string{"10.241.0.0/24"}, []string{"10.241.0.0/24"}, []string{"0.0.0.0/0"}},
		{"dual-stack", []string{"10.241.0.0/24", "fd00:244:1::/64"},
			[]string{"10.241.0.0/24", "fd00:244:1::/64"}, []string{"0.0.0.0/0", "::/0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var conf struct {
				Plugins []struct {
					Type string
					IPAM struct {
						Ranges [][]struct{ Subnet string }
						Routes []struct{ Dst string }
					}
				}
			}
			if err := json.Unmarshal([]byte(cniConfig(tc.cidrs, "/ipam")), &conf); err != nil {
				t.Fatal(err)
			}
			if len(conf.Plugins) == 0 || conf.Plugins[0].Type != "bridge" {
				t.Fatalf("first plugin %+v, want the bridge", conf.Plugins)
			}
			var subnets, dests []string
			for _, r := range conf.Plugins[0].IPAM.Ranges {
				for _, s := range r {
					subnets = append(subnets, s.Subnet)
				}
			}
			for _, r := range conf.Plugins[0].IPAM.Routes {
				dests = append(dests, r.Dst)
			}
			if !reflect.DeepEqual(subnets, tc.subnets) || !reflect.DeepEqual(dests, tc.dests) {
				t.Errorf("ranges %v routes %v, want %v %v", subnets, dests, tc.subnets, tc.dests)
			}
		})
	}
}

// TestNodeIPs pins a real node's addresses: IPv4 alone, or IPv4 then an
// IPv6 address on the underlay's ULA subnet for a dual-stack member.
func TestNodeIPs(t *testing.T) {
	v4 := clusterSpec{index: 3}
	dual := clusterSpec{index: 3, podCIDR6: netip.MustParsePrefix("fd00:244:3::/56")}
	if got := flagList(nodeIPs(v4)); got != "10.200.3.10" {
		t.Errorf("IPv4 node: %s", got)
	}
	got := nodeIPs(dual)
	if flagList(got) != "10.200.3.10,fd00:200::3:10" || !underlay6.Contains(got[1]) {
		t.Errorf("dual-stack node: %v", got)
	}
}
