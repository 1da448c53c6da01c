package dnsserver

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// tcase is one query and the response expected, CoreDNS-style: records
// as zone-file lines. SERIAL in an expected SOA stands for the index's.
type tcase struct {
	qname  string
	qtype  uint16
	rcode  int
	answer []string
	ns     []string
	extra  []string
	tc     bool
}

const soa = "clusterset.local. 5 IN SOA ns.dns.clusterset.local. hostmaster.clusterset.local. SERIAL 7200 1800 86400 5"

func nxdomain(q string, t uint16) tcase {
	return tcase{qname: q, qtype: t, rcode: dns.RcodeNameError, ns: []string{soa}}
}

func nodata(q string, t uint16) tcase {
	return tcase{qname: q, qtype: t, rcode: dns.RcodeSuccess, ns: []string{soa}}
}

var recordCases = []tcase{
	{qname: "dns-version.clusterset.local.", qtype: dns.TypeTXT, answer: []string{`dns-version.clusterset.local. 28800 IN TXT "1.0.0"`}},
	nodata("dns-version.clusterset.local.", dns.TypeA),
	// ClusterSetIP.
	{qname: "echo.demo.svc.clusterset.local.", qtype: dns.TypeA, answer: []string{"echo.demo.svc.clusterset.local. 5 IN A 10.100.0.10"}},
	nodata("echo.demo.svc.clusterset.local.", dns.TypeAAAA),
	nodata("echo.demo.svc.clusterset.local.", dns.TypeTXT),
	nodata("echo.demo.svc.clusterset.local.", dns.TypeMX),
	{qname: "echo.demo.svc.clusterset.local.", qtype: dns.TypeANY, answer: []string{"echo.demo.svc.clusterset.local. 5 IN A 10.100.0.10"}},
	{qname: "dual.demo.svc.clusterset.local.", qtype: dns.TypeA, answer: []string{"dual.demo.svc.clusterset.local. 5 IN A 10.100.9.1"}},
	{qname: "dual.demo.svc.clusterset.local.", qtype: dns.TypeAAAA, answer: []string{"dual.demo.svc.clusterset.local. 5 IN AAAA fd00:10:100::1"}},
	nodata("v6only.demo.svc.clusterset.local.", dns.TypeA),
	{qname: "v6only.demo.svc.clusterset.local.", qtype: dns.TypeAAAA, answer: []string{"v6only.demo.svc.clusterset.local. 5 IN AAAA fd00:10:100::2"}},
	nodata("pending.demo.svc.clusterset.local.", dns.TypeA), // no ClusterSetIP yet
	// Bare-name SRV (the conformance suite's query): one RR per distinct port.
	{qname: "echo.demo.svc.clusterset.local.", qtype: dns.TypeSRV, answer: []string{
		"echo.demo.svc.clusterset.local. 5 IN SRV 0 10 80 echo.demo.svc.clusterset.local.",
		"echo.demo.svc.clusterset.local. 5 IN SRV 0 10 9090 echo.demo.svc.clusterset.local.",
		"echo.demo.svc.clusterset.local. 5 IN SRV 0 10 53 echo.demo.svc.clusterset.local.",
	}, extra: []string{"echo.demo.svc.clusterset.local. 5 IN A 10.100.0.10"}},
	{qname: "_http._tcp.echo.demo.svc.clusterset.local.", qtype: dns.TypeSRV,
		answer: []string{"_http._tcp.echo.demo.svc.clusterset.local. 5 IN SRV 0 10 80 echo.demo.svc.clusterset.local."},
		extra:  []string{"echo.demo.svc.clusterset.local. 5 IN A 10.100.0.10"}},
	{qname: "_dns._udp.echo.demo.svc.clusterset.local.", qtype: dns.TypeSRV,
		answer: []string{"_dns._udp.echo.demo.svc.clusterset.local. 5 IN SRV 0 10 53 echo.demo.svc.clusterset.local."},
		extra:  []string{"echo.demo.svc.clusterset.local. 5 IN A 10.100.0.10"}},
	{qname: "_http._tcp.dual.demo.svc.clusterset.local.", qtype: dns.TypeSRV,
		answer: []string{"_http._tcp.dual.demo.svc.clusterset.local. 5 IN SRV 0 10 80 dual.demo.svc.clusterset.local."},
		extra:  []string{"dual.demo.svc.clusterset.local. 5 IN A 10.100.9.1", "dual.demo.svc.clusterset.local. 5 IN AAAA fd00:10:100::1"}},
	nxdomain("_dns._tcp.echo.demo.svc.clusterset.local.", dns.TypeSRV),
	nodata("_http._tcp.echo.demo.svc.clusterset.local.", dns.TypeA),
	nodata("_tcp.echo.demo.svc.clusterset.local.", dns.TypeSRV), // empty non-terminal
	// Headless: the union of ready endpoints over clusters.
	{qname: "db.demo.svc.clusterset.local.", qtype: dns.TypeA, answer: []string{
		"db.demo.svc.clusterset.local. 5 IN A 10.246.0.10",
		"db.demo.svc.clusterset.local. 5 IN A 10.246.1.10",
		"db.demo.svc.clusterset.local. 5 IN A 10.246.1.11",
	}},
	{qname: "db.demo.svc.clusterset.local.", qtype: dns.TypeAAAA, answer: []string{"db.demo.svc.clusterset.local. 5 IN AAAA fd00:246::10"}},
	{qname: "pod-a0.cluster-a.db.demo.svc.clusterset.local.", qtype: dns.TypeA, answer: []string{"pod-a0.cluster-a.db.demo.svc.clusterset.local. 5 IN A 10.246.0.10"}},
	{qname: "pod-a0.cluster-a.db.demo.svc.clusterset.local.", qtype: dns.TypeAAAA, answer: []string{"pod-a0.cluster-a.db.demo.svc.clusterset.local. 5 IN AAAA fd00:246::10"}},
	{qname: "10-246-1-10.cluster-b.db.demo.svc.clusterset.local.", qtype: dns.TypeA, answer: []string{"10-246-1-10.cluster-b.db.demo.svc.clusterset.local. 5 IN A 10.246.1.10"}},
	nodata("pod-b1.cluster-b.db.demo.svc.clusterset.local.", dns.TypeAAAA),
	nxdomain("pod-a1.cluster-a.db.demo.svc.clusterset.local.", dns.TypeA), // not ready
	nxdomain("pod-a0.cluster-b.db.demo.svc.clusterset.local.", dns.TypeA), // wrong cluster
	nxdomain("pod-x.db.demo.svc.clusterset.local.", dns.TypeA),
	nxdomain("x.pod-a0.cluster-a.db.demo.svc.clusterset.local.", dns.TypeA),
	// The reserved <clusterid>.<svc>.<ns> name never carries a record.
	nodata("cluster-a.db.demo.svc.clusterset.local.", dns.TypeA),
	nodata("cluster-a.db.demo.svc.clusterset.local.", dns.TypeAAAA),
	nxdomain("cluster-b.echo.demo.svc.clusterset.local.", dns.TypeA),
	{qname: "_tcp-5432._tcp.db.demo.svc.clusterset.local.", qtype: dns.TypeSRV, answer: []string{
		"_tcp-5432._tcp.db.demo.svc.clusterset.local. 5 IN SRV 0 10 5432 pod-a0.cluster-a.db.demo.svc.clusterset.local.",
		"_tcp-5432._tcp.db.demo.svc.clusterset.local. 5 IN SRV 0 10 5432 10-246-1-10.cluster-b.db.demo.svc.clusterset.local.",
		"_tcp-5432._tcp.db.demo.svc.clusterset.local. 5 IN SRV 0 10 5432 pod-b1.cluster-b.db.demo.svc.clusterset.local.",
	}, extra: []string{
		"pod-a0.cluster-a.db.demo.svc.clusterset.local. 5 IN A 10.246.0.10",
		"pod-a0.cluster-a.db.demo.svc.clusterset.local. 5 IN AAAA fd00:246::10",
		"10-246-1-10.cluster-b.db.demo.svc.clusterset.local. 5 IN A 10.246.1.10",
		"pod-b1.cluster-b.db.demo.svc.clusterset.local. 5 IN A 10.246.1.11",
	}},
	{qname: "_metrics._tcp.db.demo.svc.clusterset.local.", qtype: dns.TypeSRV, answer: []string{
		"_metrics._tcp.db.demo.svc.clusterset.local. 5 IN SRV 0 10 9100 pod-a0.cluster-a.db.demo.svc.clusterset.local.",
	}, extra: []string{
		"pod-a0.cluster-a.db.demo.svc.clusterset.local. 5 IN A 10.246.0.10",
		"pod-a0.cluster-a.db.demo.svc.clusterset.local. 5 IN AAAA fd00:246::10",
	}},
	{qname: "db.demo.svc.clusterset.local.", qtype: dns.TypeSRV, answer: []string{
		"db.demo.svc.clusterset.local. 5 IN SRV 0 10 5432 pod-a0.cluster-a.db.demo.svc.clusterset.local.",
		"db.demo.svc.clusterset.local. 5 IN SRV 0 10 9100 pod-a0.cluster-a.db.demo.svc.clusterset.local.",
		"db.demo.svc.clusterset.local. 5 IN SRV 0 10 5432 10-246-1-10.cluster-b.db.demo.svc.clusterset.local.",
		"db.demo.svc.clusterset.local. 5 IN SRV 0 10 5432 pod-b1.cluster-b.db.demo.svc.clusterset.local.",
	}, extra: []string{
		"pod-a0.cluster-a.db.demo.svc.clusterset.local. 5 IN A 10.246.0.10",
		"pod-a0.cluster-a.db.demo.svc.clusterset.local. 5 IN AAAA fd00:246::10",
		"10-246-1-10.cluster-b.db.demo.svc.clusterset.local. 5 IN A 10.246.1.10",
		"pod-b1.cluster-b.db.demo.svc.clusterset.local. 5 IN A 10.246.1.11",
	}},
	// Headless with no ready endpoint: the spec's NXDOMAIN, for every name.
	nxdomain("empty.demo.svc.clusterset.local.", dns.TypeA),
	nxdomain("_tcp-5432._tcp.empty.demo.svc.clusterset.local.", dns.TypeSRV),
	// Structure.
	nxdomain("missing.demo.svc.clusterset.local.", dns.TypeA),
	nxdomain("echo.nope.svc.clusterset.local.", dns.TypeA),
	nodata("demo.svc.clusterset.local.", dns.TypeA),
	nxdomain("nope.svc.clusterset.local.", dns.TypeA),
	nodata("svc.clusterset.local.", dns.TypeA),
	nxdomain("pod.clusterset.local.", dns.TypeA),
	nxdomain("echo.demo.pod.clusterset.local.", dns.TypeA),
	{qname: "clusterset.local.", qtype: dns.TypeSOA, answer: []string{soa}},
	{qname: "clusterset.local.", qtype: dns.TypeNS, answer: []string{"clusterset.local. 5 IN NS ns.dns.clusterset.local."}},
	nodata("clusterset.local.", dns.TypeA),
	{qname: "ns.dns.clusterset.local.", qtype: dns.TypeA, answer: []string{"ns.dns.clusterset.local. 5 IN A 10.96.0.53"}},
	nodata("ns.dns.clusterset.local.", dns.TypeAAAA),
	nodata("dns.clusterset.local.", dns.TypeA),
	// Outside the zone, and what an authoritative-only server refuses.
	{qname: "echo.demo.svc.cluster.local.", qtype: dns.TypeA, rcode: dns.RcodeRefused},
	{qname: "local.", qtype: dns.TypeSOA, rcode: dns.RcodeRefused},
	{qname: "xclusterset.local.", qtype: dns.TypeA, rcode: dns.RcodeRefused},
	{qname: "10.0.100.10.in-addr.arpa.", qtype: dns.TypePTR, rcode: dns.RcodeRefused},
	{qname: "clusterset.local.", qtype: dns.TypeAXFR, rcode: dns.RcodeRefused},
	{qname: "clusterset.local.", qtype: dns.TypeIXFR, rcode: dns.RcodeRefused},
}

func newTestHandler(t testing.TB, cfg Config) (*Handler, *Index) {
	t.Helper()
	b := testBuilder(t, cfg)
	h, err := NewHandler(b.Config(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ix := b.Build()
	h.Store(ix)
	return h, ix
}

// exchange sends m through the raw path and unpacks the response.
func exchange(t testing.TB, h *Handler, m *dns.Msg, tcp bool) (*dns.Msg, []byte) {
	t.Helper()
	req, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	raw := h.Respond(make([]byte, 0, 65535), req, netip.MustParseAddr("127.0.0.1"), tcp)
	if raw == nil {
		return nil, nil
	}
	r := new(dns.Msg)
	if err := r.Unpack(raw); err != nil {
		t.Fatalf("unpacking our response: %v", err)
	}
	return r, raw
}

func normalize(rrs []dns.RR) []string {
	out := make([]string, 0, len(rrs))
	for _, rr := range rrs {
		if rr.Header().Rrtype == dns.TypeOPT {
			continue
		}
		out = append(out, strings.ToLower(rr.String()))
	}
	slices.Sort(out)
	return out
}

func expected(t testing.TB, lines []string, serial uint32) []string {
	t.Helper()
	var rrs []dns.RR
	for _, l := range lines {
		rr, err := dns.NewRR(strings.ReplaceAll(l, "SERIAL", fmt.Sprint(serial)))
		if err != nil {
			t.Fatalf("bad expected record %q: %v", l, err)
		}
		rrs = append(rrs, rr)
	}
	return normalize(rrs)
}

func check(t *testing.T, h *Handler, serial uint32, tc tcase, edns bool) {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(tc.qname, tc.qtype)
	if edns {
		m.SetEdns0(1232, false)
	}
	for _, tcp := range []bool{false, true} {
		r, _ := exchange(t, h, m, tcp)
		if r == nil {
			t.Fatalf("no response")
		}
		if r.Rcode != tc.rcode {
			t.Errorf("tcp=%v rcode %s, want %s", tcp, dns.RcodeToString[r.Rcode], dns.RcodeToString[tc.rcode])
		}
		if r.Id != m.Id || !r.Response || r.Truncated != tc.tc || !r.RecursionDesired || r.RecursionAvailable {
			t.Errorf("header %+v", r.MsgHdr)
		}
		if want := tc.rcode != dns.RcodeRefused; r.Authoritative != want {
			t.Errorf("AA=%v, want %v", r.Authoritative, want)
		}
		if len(r.Question) != 1 || r.Question[0] != m.Question[0] {
			t.Errorf("question %v, want %v", r.Question, m.Question)
		}
		for _, sec := range []struct {
			name      string
			got, want []string
		}{
			{"answer", normalize(r.Answer), expected(t, tc.answer, h.Index().Serial())},
			{"authority", normalize(r.Ns), expected(t, tc.ns, h.Index().Serial())},
			{"additional", normalize(r.Extra), expected(t, tc.extra, h.Index().Serial())},
		} {
			if !slices.Equal(sec.got, sec.want) {
				t.Errorf("tcp=%v %s:\n got %q\nwant %q", tcp, sec.name, sec.got, sec.want)
			}
		}
		if opt := r.IsEdns0(); (opt != nil) != edns {
			t.Errorf("OPT in response: %v, want %v", opt != nil, edns)
		} else if opt != nil && (opt.UDPSize() != 1232 || opt.Version() != 0) {
			t.Errorf("OPT %v", opt)
		}
	}
}

func TestRecords(t *testing.T) {
	h, ix := newTestHandler(t, Config{})
	for _, tc := range recordCases {
		for _, edns := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/%s/edns=%v", tc.qname, dns.TypeToString[tc.qtype], edns), func(t *testing.T) {
				check(t, h, ix.Serial(), tc, edns)
			})
		}
	}
}

// TestServeDNSMatchesRespond runs every case through miekg's parsed-message
// path too (TCP and CoreDNS use it): the same bytes must come out.
func TestServeDNSMatchesRespond(t *testing.T) {
	h, _ := newTestHandler(t, Config{})
	for _, tc := range recordCases {
		m := new(dns.Msg)
		m.SetQuestion(strings.ToUpper(tc.qname), tc.qtype)
		m.SetEdns0(4096, true)
		_, raw := exchange(t, h, m, true)
		w := &recorder{tcp: true}
		h.ServeDNS(w, m)
		if string(w.out) != string(raw) {
			t.Errorf("%s %s: ServeDNS and Respond differ:\n%x\n%x", tc.qname, dns.TypeToString[tc.qtype], w.out, raw)
		}
	}
}
