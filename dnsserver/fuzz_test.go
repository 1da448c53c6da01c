package dnsserver

import (
	"net/netip"
	"testing"

	"github.com/miekg/dns"
)

// FuzzRespond feeds arbitrary packets to the query path. Whatever comes
// in, the server must not panic, and anything it sends must be a
// well-formed response to that request that fits the transport. The seed
// corpus (testdata/fuzz/FuzzRespond) holds real queries for every record
// type and the malformed shapes of TestOpcodesAndMalformedQueries.
func FuzzRespond(f *testing.F) {
	h, _ := newTestHandler(f, Config{ClusterZone: "clusters.isthmus.local."})
	for _, tc := range recordCases {
		m := new(dns.Msg)
		m.SetQuestion(tc.qname, tc.qtype)
		m.SetEdns0(1232, true)
		b, _ := m.Pack()
		f.Add(b, false)
	}
	buf := make([]byte, 0, 65535)
	f.Fuzz(func(t *testing.T, pkt []byte, tcp bool) {
		out := h.Respond(buf, pkt, netip.MustParseAddr("192.0.2.1"), tcp)
		if out == nil {
			return
		}
		limit := 512
		if !tcp {
			var q query
			if q.parse(pkt) == stOK && q.edns && int(q.udpSize) > limit {
				limit = min(int(q.udpSize), h.cfg.MaxUDPSize)
			}
		} else {
			limit = 65535
		}
		if len(out) > limit {
			t.Fatalf("response of %d bytes, limit %d", len(out), limit)
		}
		r := new(dns.Msg)
		if err := r.Unpack(out); err != nil {
			t.Fatalf("our response does not parse: %v\n%x", err, out)
		}
		if !r.Response || len(pkt) < 2 || r.Id != be.Uint16(pkt) {
			t.Fatalf("not a response to this request: %v", r.MsgHdr)
		}
		if len(r.Question) > 1 {
			t.Fatalf("%d questions echoed", len(r.Question))
		}
	})
}
