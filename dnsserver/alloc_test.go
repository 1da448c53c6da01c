package dnsserver

import (
	"net/netip"
	"testing"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// TestRespondDoesNotAllocate: the raw query path packs nothing and
// allocates nothing, for positive, negative, truncated and error answers.
func TestRespondDoesNotAllocate(t *testing.T) {
	h, _ := newTestHandler(t, Config{})
	h.obs = NewMetrics(prometheus.NewRegistry(), nil) // counting must not allocate either
	buf := make([]byte, 0, 65535)
	from := netip.MustParseAddr("10.0.0.1")
	for _, tc := range []struct {
		name  string
		qtype uint16
		edns  bool
	}{
		{"echo.demo.svc.clusterset.local.", dns.TypeA, true},
		{"_tcp-5432._tcp.db.demo.svc.clusterset.local.", dns.TypeSRV, false},
		{"big.other.svc.clusterset.local.", dns.TypeA, false},
		{"nope.demo.svc.clusterset.local.", dns.TypeA, true},
		{"echo.demo.svc.clusterset.local.", dns.TypeTXT, false},
		{"example.com.", dns.TypeA, false},
		{"db.demo.svc.clusterset.local.", dns.TypeANY, false},
		{"EcHo.demo.svc.clusterset.local.", dns.TypeSRV, true},
	} {
		m := new(dns.Msg)
		m.SetQuestion(tc.name, tc.qtype)
		if tc.edns {
			m.SetEdns0(1232, false)
		}
		req, _ := m.Pack()
		if n := testing.AllocsPerRun(200, func() { h.Respond(buf, req, from, false) }); n != 0 {
			t.Errorf("%s %s: %.1f allocations per query", tc.name, dns.TypeToString[tc.qtype], n)
		}
	}
}
