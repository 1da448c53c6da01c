package dnsserver

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

func TestCaseIsEchoed(t *testing.T) {
	h, _ := newTestHandler(t, Config{})
	for _, name := range []string{"EcHo.DeMo.SVC.ClusterSet.LOCAL.", "NoPe.DeMo.SVC.ClusterSet.LOCAL.", "Demo.svc.CLUSTERSET.local."} {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		r, _ := exchange(t, h, m, false)
		if r.Question[0].Name != name {
			t.Errorf("question %q, want %q echoed", r.Question[0].Name, name)
		}
		for _, rr := range append(r.Answer, r.Ns...) {
			if !strings.EqualFold(rr.Header().Name, name) && !strings.HasSuffix(strings.ToLower(name), rr.Header().Name) && !strings.HasSuffix(name, rr.Header().Name) {
				t.Errorf("%s: record owner %q", name, rr.Header().Name)
			}
		}
	}
	m := new(dns.Msg)
	m.SetQuestion("EcHo.DeMo.SVC.ClusterSet.LOCAL.", dns.TypeA)
	if r, _ := exchange(t, h, m, false); len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "10.100.0.10" {
		t.Errorf("mixed-case query: %v", r.Answer)
	}
}

func TestEDNS(t *testing.T) {
	h, _ := newTestHandler(t, Config{})
	m := new(dns.Msg)
	m.SetQuestion("echo.demo.svc.clusterset.local.", dns.TypeA)
	m.SetEdns0(4096, true)
	opt := m.IsEdns0()
	opt.Option = append(opt.Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0123456789abcdef"}, &dns.EDNS0_LOCAL{Code: 65001, Data: []byte{1, 2, 3}})
	r, _ := exchange(t, h, m, false)
	ro := r.IsEdns0()
	if r.Rcode != dns.RcodeSuccess || ro == nil || ro.UDPSize() != 1232 || !ro.Do() || ro.Version() != 0 || len(r.Answer) != 1 {
		t.Fatalf("EDNS query with unknown options: rcode %d, opt %v, answer %v", r.Rcode, ro, r.Answer)
	}

	// Version 1: BADVERS (extended rcode 16), with our OPT at version 0.
	m.IsEdns0().SetVersion(1)
	r, raw := exchange(t, h, m, false)
	if r.Rcode != dns.RcodeBadVers || r.IsEdns0() == nil || r.IsEdns0().Version() != 0 || len(r.Answer) != 0 {
		t.Errorf("EDNS version 1: rcode %d (%s), opt %v", r.Rcode, dns.RcodeToString[r.Rcode], r.IsEdns0())
	}
	if rcodeOf(raw) != dns.RcodeBadVers {
		t.Errorf("rcodeOf BADVERS = %d", rcodeOf(raw))
	}

	// No OPT in the query: none in the response.
	m = new(dns.Msg)
	m.SetQuestion("nope.demo.svc.clusterset.local.", dns.TypeA)
	if r, _ := exchange(t, h, m, false); r.IsEdns0() != nil || r.Rcode != dns.RcodeNameError {
		t.Errorf("plain query: opt %v rcode %d", r.IsEdns0(), r.Rcode)
	}
}

func TestOpcodesAndMalformedQueries(t *testing.T) {
	h, _ := newTestHandler(t, Config{})
	q := func(mod func(*dns.Msg)) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion("echo.demo.svc.clusterset.local.", dns.TypeA)
		mod(m)
		return m
	}
	for _, tc := range []struct {
		name  string
		m     *dns.Msg
		rcode int // -1: no response
	}{
		{"notify", q(func(m *dns.Msg) { m.Opcode = dns.OpcodeNotify }), dns.RcodeNotImplemented},
		{"update", q(func(m *dns.Msg) { m.SetUpdate("clusterset.local.") }), dns.RcodeNotImplemented},
		{"iquery", q(func(m *dns.Msg) { m.Opcode = dns.OpcodeIQuery }), dns.RcodeNotImplemented},
		{"status", q(func(m *dns.Msg) { m.Opcode = dns.OpcodeStatus }), dns.RcodeNotImplemented},
		{"opcode 15", q(func(m *dns.Msg) { m.Opcode = 15 }), dns.RcodeNotImplemented},
		{"no question", q(func(m *dns.Msg) { m.Question = nil }), dns.RcodeFormatError},
		{"two questions", q(func(m *dns.Msg) { m.Question = append(m.Question, m.Question[0]) }), dns.RcodeFormatError},
		{"answer in query", q(func(m *dns.Msg) { m.Answer = []dns.RR{&dns.A{Hdr: hdr("x.", dns.TypeA, 1), A: []byte{1, 2, 3, 4}}} }), dns.RcodeFormatError},
		{"two additional", q(func(m *dns.Msg) {
			m.SetEdns0(1232, false)
			m.Extra = append(m.Extra, &dns.A{Hdr: hdr("x.", dns.TypeA, 1), A: []byte{1, 2, 3, 4}})
		}), dns.RcodeFormatError},
		{"non-OPT additional", q(func(m *dns.Msg) { m.Extra = []dns.RR{&dns.A{Hdr: hdr("x.", dns.TypeA, 1), A: []byte{1, 2, 3, 4}}} }), dns.RcodeFormatError},
		{"a response", q(func(m *dns.Msg) { m.Response = true }), -1},
		{"class CH", q(func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassCHAOS }), dns.RcodeRefused},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, parsed := range []bool{false, true} {
				var r *dns.Msg
				if parsed {
					w := &recorder{}
					h.ServeDNS(w, tc.m)
					if w.out != nil {
						r = new(dns.Msg)
						if err := r.Unpack(w.out); err != nil {
							t.Fatal(err)
						}
					}
				} else {
					r, _ = exchange(t, h, tc.m, false)
				}
				if tc.rcode < 0 {
					if r != nil {
						t.Errorf("parsed=%v: answered a response: %v", parsed, r)
					}
					continue
				}
				if r == nil {
					t.Fatalf("parsed=%v: no response", parsed)
				}
				if r.Rcode != tc.rcode || r.Id != tc.m.Id || r.Opcode != tc.m.Opcode || len(r.Answer) != 0 || r.Authoritative {
					t.Errorf("parsed=%v: rcode %s opcode %d id %d aa %v, want %s", parsed, dns.RcodeToString[r.Rcode], r.Opcode, r.Id, r.Authoritative, dns.RcodeToString[tc.rcode])
				}
			}
		})
	}

	// Raw packets miekg cannot produce.
	for _, tc := range []struct {
		name  string
		pkt   []byte
		rcode int
	}{
		{"short header", []byte{1, 2, 3}, -1},
		{"header only, qdcount 1", []byte{0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}, dns.RcodeFormatError},
		{"label past the end", append([]byte{0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}, 10, 'a', 'b'), dns.RcodeFormatError},
		{"compression pointer in question", append([]byte{0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}, 0xC0, 12, 0, 1, 0, 1), dns.RcodeFormatError},
		{"extended label type", append([]byte{0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}, 0x41, 'a', 0, 0, 1, 0, 1), dns.RcodeFormatError},
		{"name longer than 255", append(append([]byte{0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}, longName(300)...), 0, 1, 0, 1), dns.RcodeFormatError},
		{"missing type and class", append([]byte{0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}, 1, 'a', 0, 0), dns.RcodeFormatError},
		{"OPT past the end", append([]byte{0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1}, 1, 'a', 0, 0, 1, 0, 1, 0, 0, 41, 16), dns.RcodeFormatError},
		{"OPT rdlength past the end", append([]byte{0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1}, 1, 'a', 0, 0, 1, 0, 1, 0, 0, 41, 16, 0, 0, 0, 0, 0, 0, 99), dns.RcodeFormatError},
		{"OPT option past rdata", append([]byte{0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1}, 1, 'a', 0, 0, 1, 0, 1, 0, 0, 41, 16, 0, 0, 0, 0, 0, 0, 4, 0, 10, 0, 9), dns.RcodeFormatError},
		{"huge EDNS size", append([]byte{0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1}, append(wireName("echo.demo.svc.clusterset.local."), 0, 1, 0, 1, 0, 0, 41, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0)...), dns.RcodeSuccess},
		{"many questions", append([]byte{0, 7, 1, 0, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0}, append(wireName("echo.demo.svc.clusterset.local."), 0, 1, 0, 1)...), dns.RcodeFormatError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := h.Respond(nil, tc.pkt, netip.MustParseAddr("::1"), false)
			if tc.rcode < 0 {
				if out != nil {
					t.Errorf("answered: %x", out)
				}
				return
			}
			r := new(dns.Msg)
			if err := r.Unpack(out); err != nil {
				t.Fatalf("unpacking %x: %v", out, err)
			}
			if r.Rcode != tc.rcode || r.Id != 7 {
				t.Errorf("rcode %s id %d, want %s", dns.RcodeToString[r.Rcode], r.Id, dns.RcodeToString[tc.rcode])
			}
		})
	}
}

func wireName(n string) []byte {
	buf := make([]byte, 256)
	off, _ := dns.PackDomainName(n, buf, 0, nil, false)
	return buf[:off]
}

func longName(n int) []byte {
	var b []byte
	for len(b) < n {
		b = append(b, 9, 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i')
	}
	return append(b, 0)
}

func TestUnsyncedAnswersServfail(t *testing.T) {
	h, err := NewHandler(Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, rcode := range map[string]int{
		"echo.demo.svc.clusterset.local.": dns.RcodeServerFailure,
		"clusterset.local.":               dns.RcodeServerFailure,
		"example.com.":                    dns.RcodeRefused,
	} {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		if r, _ := exchange(t, h, m, false); r.Rcode != rcode {
			t.Errorf("%s before the first sync: %s, want %s", name, dns.RcodeToString[r.Rcode], dns.RcodeToString[rcode])
		}
	}
}

// TestTruncation: a headless service of 200 endpoints does not fit UDP;
// each UDP answer is a whole-record subset with TC, within the client's
// size, rotating so that every endpoint is served; TCP gets all.
func TestTruncation(t *testing.T) {
	h, _ := newTestHandler(t, Config{})
	const name = "big.other.svc.clusterset.local."
	for _, tc := range []struct {
		name   string
		bufsz  uint16 // 0: no EDNS
		tcp    bool
		limit  int
		all    bool
		qtypes []uint16
	}{
		{"no EDNS", 0, false, 512, false, []uint16{dns.TypeA, dns.TypeSRV}},
		{"EDNS 1024", 1024, false, 1024, false, []uint16{dns.TypeA, dns.TypeSRV}},
		{"EDNS 4096 capped at 1232", 4096, false, 1232, false, []uint16{dns.TypeA, dns.TypeSRV}},
		{"TCP", 0, true, 65535, true, []uint16{dns.TypeA, dns.TypeSRV}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, qt := range tc.qtypes {
				seen := map[string]bool{}
				for i := range 300 {
					m := new(dns.Msg)
					m.SetQuestion(name, qt)
					if tc.bufsz > 0 {
						m.SetEdns0(tc.bufsz, false)
					}
					req, _ := m.Pack()
					// Different clients get different subsets.
					from := netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
					raw := h.Respond(nil, req, from, tc.tcp)
					if len(raw) > tc.limit {
						t.Fatalf("%s: %d bytes, limit %d", dns.TypeToString[qt], len(raw), tc.limit)
					}
					r := new(dns.Msg)
					if err := r.Unpack(raw); err != nil {
						t.Fatal(err)
					}
					if r.Truncated == tc.all || len(r.Answer) == 0 {
						t.Fatalf("%s: TC=%v with %d answers", dns.TypeToString[qt], r.Truncated, len(r.Answer))
					}
					if tc.all && len(r.Answer) != 200 {
						t.Fatalf("%s over TCP: %d answers, want 200", dns.TypeToString[qt], len(r.Answer))
					}
					for _, rr := range r.Answer {
						seen[strings.Fields(rr.String())[4+boolInt(qt == dns.TypeSRV)*3]] = true
					}
				}
				if len(seen) != 200 {
					t.Errorf("%s: rotations served %d distinct endpoints, want all 200", dns.TypeToString[qt], len(seen))
				}
			}
		})
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestDualStackSubsetsMatch: when A and AAAA must be cut, one client gets
// the same endpoints in both.
func TestDualStackSubsetsMatch(t *testing.T) {
	b := testBuilder(t, Config{})
	var v4, v6 []ep
	for i := range 150 {
		host := "p" + strings.Repeat("x", i%3) + string(rune('a'+i%26)) + string(rune('a'+i/26))
		v4 = append(v4, ep{host, nil, []string{netip.AddrFrom4([4]byte{10, 9, byte(i / 200), byte(i%200 + 1)}).String()}})
		v6 = append(v6, ep{host, nil, []string{netip.AddrFrom16([16]byte{0xfd, 0, 15: byte(i)}).String()}})
	}
	b.SetImport(imp("other", "ds", "Headless", nil))
	b.SetSlice(slice("other", "ds4", "ds", "c1", "IPv4", nil, v4...))
	b.SetSlice(slice("other", "ds6", "ds", "c1", "IPv6", nil, v6...))
	h, _ := NewHandler(b.Config(), nil)
	h.Store(b.Build())
	for i := range 20 {
		from := netip.AddrFrom4([4]byte{10, 1, 0, byte(i)})
		var hosts [2][]byte
		for j, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
			m := new(dns.Msg)
			m.SetQuestion("ds.other.svc.clusterset.local.", qt)
			req, _ := m.Pack()
			r := new(dns.Msg)
			if err := r.Unpack(h.Respond(nil, req, from, false)); err != nil {
				t.Fatal(err)
			}
			for _, rr := range r.Answer {
				switch a := rr.(type) {
				case *dns.A:
					hosts[j] = append(hosts[j], a.A.To4()[3]-1+byte(int(a.A.To4()[2])*200))
				case *dns.AAAA:
					hosts[j] = append(hosts[j], a.AAAA[15])
				}
			}
		}
		slices.Sort(hosts[0])
		slices.Sort(hosts[1])
		if len(hosts[0]) == 0 || !slices.Equal(hosts[0], hosts[1]) {
			t.Fatalf("client %d: A endpoints %v, AAAA endpoints %v", i, hosts[0], hosts[1])
		}
	}
}

func TestPerClusterZone(t *testing.T) {
	cz := "clusters.isthmus.local."
	h, ix := newTestHandler(t, Config{ClusterZone: cz})
	czSOA := "clusters.isthmus.local. 5 IN SOA ns.dns.clusters.isthmus.local. hostmaster.clusters.isthmus.local. SERIAL 7200 1800 86400 5"
	for _, tc := range []tcase{
		{qname: "echo.demo.svc.cluster-b." + cz, qtype: dns.TypeA, answer: []string{"echo.demo.svc.cluster-b.clusters.isthmus.local. 5 IN A 10.246.1.20"}},
		{qname: "db.demo.svc.cluster-a." + cz, qtype: dns.TypeA, answer: []string{"db.demo.svc.cluster-a.clusters.isthmus.local. 5 IN A 10.246.0.10"}},
		{qname: "db.demo.svc.cluster-a." + cz, qtype: dns.TypeAAAA, answer: []string{"db.demo.svc.cluster-a.clusters.isthmus.local. 5 IN AAAA fd00:246::10"}},
		{qname: "db.demo.svc.cluster-b." + cz, qtype: dns.TypeA, answer: []string{
			"db.demo.svc.cluster-b.clusters.isthmus.local. 5 IN A 10.246.1.10",
			"db.demo.svc.cluster-b.clusters.isthmus.local. 5 IN A 10.246.1.11",
		}},
		{qname: "echo.demo.svc.cluster-a." + cz, qtype: dns.TypeA, rcode: dns.RcodeNameError, ns: []string{czSOA}},
		{qname: "echo.demo.svc.cluster-z." + cz, qtype: dns.TypeA, rcode: dns.RcodeNameError, ns: []string{czSOA}},
		{qname: "demo.svc.cluster-b." + cz, qtype: dns.TypeA, ns: []string{czSOA}},
		{qname: "svc.cluster-b." + cz, qtype: dns.TypeA, ns: []string{czSOA}},
		{qname: "cluster-b." + cz, qtype: dns.TypeA, ns: []string{czSOA}},
		{qname: "nope.svc.cluster-b." + cz, qtype: dns.TypeA, rcode: dns.RcodeNameError, ns: []string{czSOA}},
		{qname: cz, qtype: dns.TypeSOA, answer: []string{czSOA}},
		// The clusterset zone stays the spec's.
		nodata("cluster-b.db.demo.svc.clusterset.local.", dns.TypeA),
		nxdomain("cluster-b.echo.demo.svc.clusterset.local.", dns.TypeA),
	} {
		t.Run(tc.qname+"/"+dns.TypeToString[tc.qtype], func(t *testing.T) { check(t, h, ix.Serial(), tc, false) })
	}
	if _, err := NewBuilder(Config{ClusterZone: "x.clusterset.local"}, nil); err == nil {
		t.Error("a cluster zone inside the clusterset zone was accepted")
	}
}

func TestConfigErrors(t *testing.T) {
	for _, c := range []Config{{TTL: 4000}, {MaxUDPSize: 100}, {Zone: "."}, {Zone: "a..b"}, {ClusterZone: "clusterset.local"}} {
		if _, err := NewBuilder(c, nil); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
}
