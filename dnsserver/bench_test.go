package dnsserver

import (
	"net/netip"
	"testing"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkRespond is the answer path alone (parse, lookup, copy, patch,
// count), without sockets: set against the whole server's CPU per query
// in bench/README.md, it says how much of a query is ours and how much
// the kernel's.
func BenchmarkRespond(b *testing.B) {
	h, _ := newTestHandler(b, Config{})
	h.obs = NewMetrics(prometheus.NewRegistry(), nil)
	for _, bc := range []struct {
		name  string
		qname string
		qtype uint16
	}{
		{"ClusterSetIP-A", "echo.demo.svc.clusterset.local.", dns.TypeA},
		{"headless-SRV", "_tcp-5432._tcp.db.demo.svc.clusterset.local.", dns.TypeSRV},
		{"NXDOMAIN", "missing.demo.svc.clusterset.local.", dns.TypeA},
		{"truncated-200", "big.other.svc.clusterset.local.", dns.TypeA},
	} {
		m := new(dns.Msg)
		m.SetQuestion(bc.qname, bc.qtype)
		m.SetEdns0(1232, false)
		req, _ := m.Pack()
		buf := make([]byte, 0, 65535)
		from := netip.MustParseAddr("10.0.0.1")
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				h.Respond(buf, req, from, false)
			}
		})
	}
}

// BenchmarkBuild is the cost of repacking after a change, on the table
// tests' objects.
func BenchmarkBuild(b *testing.B) {
	bl := testBuilder(b, Config{})
	bl.Build()
	es := slice("demo", "db-b", "db", "cluster-b", "IPv4", nil, ep{"pod-b9", nil, []string{"10.246.1.99"}})
	b.ReportAllocs()
	for b.Loop() {
		bl.SetSlice(es)
		bl.Build()
	}
}
