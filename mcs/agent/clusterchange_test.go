package agent

import (
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

func TestClustersMoved(t *testing.T) {
	joined := metav1.NewTime(time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC))
	rec := func(id string, mod ...func(*brokerv1.Cluster)) *brokerv1.Cluster {
		c := &brokerv1.Cluster{ObjectMeta: metav1.ObjectMeta{Name: id, CreationTimestamp: joined},
			Spec: brokerv1.ClusterSpec{ClusterID: id, Region: "eu", PodCIDRs: []string{"10.1.0.0/16"}}}
		for _, m := range mod {
			m(c)
		}
		return c
	}
	peers := func(states ...brokerv1.TunnelPeerState) func(*brokerv1.Cluster) {
		return func(c *brokerv1.Cluster) {
			c.Status.Tunnel = &brokerv1.TunnelStatus{}
			for i, s := range states {
				c.Status.Tunnel.Peers = append(c.Status.Tunnel.Peers, brokerv1.TunnelPeerStatus{Cluster: string(rune('p' + i)), State: s})
			}
		}
	}
	heartbeat := func(status metav1.ConditionStatus) func(*brokerv1.Cluster) {
		return func(c *brokerv1.Cluster) {
			c.Status.Conditions = []metav1.Condition{{Type: brokerv1.ClusterConditionHeartbeat, Status: status}}
		}
	}
	up, down := brokerv1.TunnelPeerConnected, brokerv1.TunnelPeerError
	tests := []struct {
		name     string
		old, cur *brokerv1.Cluster
		want     []string
	}{
		{"a peer's record appears", nil, rec("b"), []string{"b"}},
		{"a peer's record goes", rec("b"), nil, []string{"b"}},
		{"a peer moves region", rec("b"), rec("b", func(c *brokerv1.Cluster) { c.Spec.Region = "us" }), []string{"b"}},
		{"a peer's pod ranges change", rec("b"), rec("b", func(c *brokerv1.Cluster) { c.Spec.PodCIDRs = []string{"10.2.0.0/16"} }), []string{"b"}},
		{"a peer rejoined", rec("b"), rec("b", func(c *brokerv1.Cluster) { c.CreationTimestamp = metav1.NewTime(joined.Add(time.Hour)) }), []string{"b"}},
		{"a peer's tunnel status moves nothing here", rec("b", peers(up)), rec("b", peers(down)), nil},
		{"a Heartbeat condition moves nothing", rec("b", heartbeat("True")), rec("b", heartbeat("False")), nil},
		{"a peer's gateways and versions move nothing", rec("b"), rec("b", func(c *brokerv1.Cluster) {
			c.Spec.Versions = map[string]string{"agent": "v2"}
			c.Spec.ServiceCIDRs = []string{"10.96.0.0/12"}
		}), nil},
		{"our tunnel's routine status write moves nothing", rec("a", peers(up, up)), rec("a", peers(up, up), func(c *brokerv1.Cluster) {
			c.Status.Tunnel.Peers[0].Message = "handshake 3 s ago"
		}), nil},
		{"our tunnel loses a peer", rec("a", peers(up, up)), rec("a", peers(up, down)), []string{"q"}},
		{"our tunnel regains a peer", rec("a", peers(down, up)), rec("a", peers(up, up)), []string{"p"}},
		{"connecting is still reachable", rec("a", peers(up)), rec("a", peers(brokerv1.TunnelPeerConnecting)), nil},
		{"a conflict is unreachable", rec("a", peers(up)), rec("a", peers(brokerv1.TunnelPeerConflict)), []string{"p"}},
		{"our tunnel status appears with a peer down", rec("a"), rec("a", peers(down, up)), []string{"p"}},
		{"our record appears", nil, rec("a", peers(down)), []string{"a", "p"}},
		{"our region and a peer change at once", rec("a", peers(up)), rec("a", peers(down), func(c *brokerv1.Cluster) { c.Spec.Region = "us" }), []string{"a", "p"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := clustersMoved(tt.old, tt.cur, "a"); !slices.Equal(got, tt.want) {
				t.Errorf("clustersMoved = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestHealthWriter(t *testing.T) {
	healthyBut := func(lapsed ...string) func(string) bool {
		return func(c string) bool { return !slices.Contains(lapsed, c) }
	}
	tests := []struct {
		name string
		ids  []string
		self string
		ok   func(string) bool
		want string
	}{
		{"the first healthy id writes", []string{"c", "a", "b"}, "b", healthyBut(), "a"},
		{"the first is me", []string{"c", "a", "b"}, "a", healthyBut(), "a"},
		{"a lapsed first is passed over", []string{"a", "b", "c"}, "c", healthyBut("a"), "b"},
		{"all others lapsed: me", []string{"a", "b", "c"}, "c", healthyBut("a", "b"), "c"},
		{"I have no record yet and still judge", []string{"b", "c"}, "a", healthyBut(), "a"},
		{"I count myself healthy whatever the judge says", []string{"a", "b"}, "a", healthyBut("a"), "a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := healthWriter(tt.ids, tt.self, tt.ok); got != tt.want {
				t.Errorf("healthWriter = %q, want %q", got, tt.want)
			}
		})
	}
}
