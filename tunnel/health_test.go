package tunnel

import (
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func TestJudge(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	ep := &net.UDPAddr{IP: net.ParseIP("192.0.2.2"), Port: 51820}
	tests := []struct {
		name   string
		ph     peerHealth
		dp     *wgtypes.Peer
		state  string
		reason string
	}{
		{"missing from the device", peerHealth{}, nil, StateError, "missing"},
		{"new, no handshake yet", peerHealth{configuredAt: now.Add(-5 * time.Second)}, &wgtypes.Peer{Endpoint: ep}, StateConnecting, "first handshake"},
		{"no handshake after the grace", peerHealth{configuredAt: now.Add(-31 * time.Second)}, &wgtypes.Peer{Endpoint: ep}, StateError, "192.0.2.2:51820 reachable"},
		{"handshake too old", peerHealth{everOK: true}, &wgtypes.Peer{LastHandshakeTime: now.Add(-181 * time.Second)}, StateError, "no session can exist"},
		{"probes lost", peerHealth{everOK: true, failures: 3}, &wgtypes.Peer{LastHandshakeTime: now.Add(-5 * time.Second)}, StateError, "echo probes"},
		{"two probes lost is not yet an error", peerHealth{everOK: true, failures: 2}, &wgtypes.Peer{LastHandshakeTime: now.Add(-5 * time.Second)}, StateConnected, ""},
		{"handshake but no echo yet", peerHealth{}, &wgtypes.Peer{LastHandshakeTime: now.Add(-time.Second)}, StateConnecting, "first echo"},
		{"healthy", peerHealth{everOK: true}, &wgtypes.Peer{LastHandshakeTime: now.Add(-119 * time.Second)}, StateConnected, "answered"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := judge(tt.ph, tt.dp, now)
			if v.state != tt.state || !strings.Contains(v.message, tt.reason) || v.reason == "" || strings.ContainsAny(v.reason, " ;:") {
				t.Errorf("judge = %+v, want %s, a CamelCase reason, a message containing %q", v, tt.state, tt.reason)
			}
		})
	}
}

// TestProbeEcho runs the echo server and probe rounds over loopback: an
// answered target gets an RTT, a silent one an error, in the same round.
func TestProbeEcho(t *testing.T) {
	free := func() netip.AddrPort {
		l, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.LocalAddr().(*net.UDPAddr).AddrPort()
	}
	addr, silent := free(), free()
	stop, err := echoServer(t.Context(), addr, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	pr, err := newProber()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.close()
	res := pr.round([]netip.AddrPort{addr, silent, addr}, time.Second)
	if len(res) != 3 || res[0].Err != nil || res[0].RTT <= 0 || res[2].Err != nil || res[2].RTT <= 0 {
		t.Fatalf("round: %+v, want answers from %s", res, addr)
	}
	if res[1].Err == nil {
		t.Fatalf("round: %+v, want no answer from %s", res, silent)
	}
	stop()
	if res := pr.round([]netip.AddrPort{addr}, 200*time.Millisecond); res[0].Err == nil {
		t.Fatal("a probe got an answer with the echo server stopped")
	}
	if res := pr.round(nil, time.Second); len(res) != 0 {
		t.Fatalf("empty round: %+v", res)
	}
}

func TestConfigValidate(t *testing.T) {
	good := Config{ClusterID: "a", BrokerNamespace: "b", Device: "isthmus0", Implementation: Auto, MTU: 1420, ListenPort: 51820,
		Endpoint: netip.MustParseAddrPort("192.0.2.1:51820"), ProbePort: 51821, Keepalive: 10 * time.Second,
		Resync: time.Second, ProbeInterval: time.Second, StatusInterval: time.Second, RouteProtocol: 158, RouteTable: 254,
		KeyNamespace: "isthmus-system", KeySecret: "k"}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mutate := range map[string]func(*Config){
		"nameless replica":  func(c *Config) { c.Election = &Election{} },
		"long device":       func(c *Config) { c.Device = "sixteen-chars-xx" },
		"keepalive off":     func(c *Config) { c.Keepalive = 0 },
		"kernel's protocol": func(c *Config) { c.RouteProtocol = 2 },
		"no endpoint":       func(c *Config) { c.Endpoint = netip.AddrPort{} },
		"unspecified":       func(c *Config) { c.Endpoint = netip.MustParseAddrPort("0.0.0.0:51820") },
		"tiny MTU":          func(c *Config) { c.MTU = 576 },
		"no key secret":     func(c *Config) { c.KeySecret = "" },
	} {
		c := good
		mutate(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// What only a running process knows is New's to check.
	for name, mutate := range map[string]func(*Config){
		"no cluster":          func(c *Config) { c.ClusterID = "" },
		"no broker namespace": func(c *Config) { c.BrokerNamespace = "" },
		"no clients":          func(c *Config) {},
	} {
		c := good
		mutate(&c)
		if _, err := New(c); err == nil {
			t.Errorf("New with %s: accepted", name)
		}
	}
	if _, err := ParseImplementation("bogus"); err == nil {
		t.Error("ParseImplementation accepted bogus")
	}
}
