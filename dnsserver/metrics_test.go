package dnsserver

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg, func() time.Duration { return 3 * time.Second })
	b := testBuilder(t, Config{})
	h, _ := NewHandler(b.Config(), m)
	ix := b.Build()
	h.Store(ix)
	m.SetIndex(ix)
	send := func(name string, qt uint16, mod func(*dns.Msg)) {
		q := new(dns.Msg)
		q.SetQuestion(name, qt)
		if mod != nil {
			mod(q)
		}
		req, _ := q.Pack()
		h.Respond(nil, req, netip.MustParseAddr("127.0.0.1"), false)
	}
	send("echo.demo.svc.clusterset.local.", dns.TypeA, nil)
	send("echo.demo.svc.clusterset.local.", dns.TypeA, nil)
	send("nope.demo.svc.clusterset.local.", dns.TypeAAAA, nil)
	send("echo.demo.svc.clusterset.local.", dns.TypeMX, nil)
	send("example.com.", dns.TypeA, nil)
	send("echo.demo.svc.clusterset.local.", dns.TypeA, func(m *dns.Msg) { m.SetEdns0(1232, false); m.IsEdns0().SetVersion(2) })
	send("echo.demo.svc.clusterset.local.", dns.TypeA, func(m *dns.Msg) { m.Response = true }) // dropped: not counted
	got := map[string]float64{}
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "isthmus_dns_queries_total" {
			continue
		}
		for _, mm := range mf.GetMetric() {
			if v := mm.GetCounter().GetValue(); v > 0 {
				l := mm.GetLabel()
				got[l[0].GetValue()+"/"+l[1].GetValue()] = v
			}
		}
	}
	exp := map[string]float64{"NOERROR/A": 2, "NXDOMAIN/AAAA": 1, "NOERROR/other": 1, "REFUSED/A": 1, "BADVERS/A": 1}
	if len(got) != len(exp) {
		t.Errorf("counted %v, want %v", got, exp)
	}
	for k, v := range exp {
		if got[k] != v {
			t.Errorf("%s: %v, want %v (all: %v)", k, got[k], v, got)
		}
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP isthmus_dns_sync_age_seconds Seconds since the apiserver last showed it was there (an event or a probe): how stale answers may be.
# TYPE isthmus_dns_sync_age_seconds gauge
isthmus_dns_sync_age_seconds 3
# HELP isthmus_dns_index_services ServiceImports in the current index.
# TYPE isthmus_dns_index_services gauge
isthmus_dns_index_services 7
`), "isthmus_dns_sync_age_seconds", "isthmus_dns_index_services"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(reg, "isthmus_dns_query_duration_seconds"); n != 1 {
		t.Errorf("latency histogram: %d series", n)
	}
	if v := testutil.ToFloat64(m.names); v != float64(ix.Names()) || v < 20 {
		t.Errorf("names gauge %v, index %d", v, ix.Names())
	}
}
