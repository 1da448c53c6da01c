package dnsserver

import (
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// The types and rcodes queries are counted by; anything else is "other",
// so that no packet can grow the number of series.
var (
	metricTypes  = []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeSRV, dns.TypeTXT, dns.TypeSOA, dns.TypeNS, dns.TypeANY, dns.TypePTR}
	metricRcodes = []int{dns.RcodeSuccess, dns.RcodeFormatError, dns.RcodeServerFailure, dns.RcodeNameError, dns.RcodeNotImplemented, dns.RcodeRefused, dns.RcodeBadVers}
)

// Metrics is the resolver's Prometheus metrics, isthmus_dns_*. It is the
// Handler's Observer; counters are resolved once so that counting a
// query is two atomic adds.
type Metrics struct {
	queries  [][]prometheus.Counter // [type index][rcode index], last of each is "other"
	latency  prometheus.Histogram
	names    prometheus.Gauge
	services prometheus.Gauge
	builds   prometheus.Counter
}

// NewMetrics registers the metrics in reg. syncAge reports how stale the
// index may be (Source.SyncAge); nil leaves that gauge out.
func NewMetrics(reg prometheus.Registerer, syncAge func() time.Duration) *Metrics {
	m := &Metrics{
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "isthmus_dns_query_duration_seconds",
			Help: "Time from a parsed request to its packed response, inside the server.",
			// 1 µs to ~4 ms: the answer path is copy-and-patch.
			Buckets: prometheus.ExponentialBuckets(1e-6, 2, 13),
		}),
		names: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "isthmus_dns_index_names", Help: "Owner names the current index answers for.",
		}),
		services: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "isthmus_dns_index_services", Help: "ServiceImports in the current index.",
		}),
		builds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "isthmus_dns_index_builds_total", Help: "Indexes built and swapped in.",
		}),
	}
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "isthmus_dns_queries_total", Help: "Queries answered, by query type and response code.",
	}, []string{"type", "rcode"})
	for _, t := range append(metricTypes, 0) {
		var row []prometheus.Counter
		for _, rc := range append(metricRcodes, -1) {
			row = append(row, vec.WithLabelValues(typeName(t), rcodeName(rc)))
		}
		m.queries = append(m.queries, row)
	}
	reg.MustRegister(vec, m.latency, m.names, m.services, m.builds)
	if syncAge != nil {
		reg.MustRegister(syncAgeGauge(syncAge))
	}
	return m
}

// syncAgeGauge reports syncAge (Source.SyncAge) as
// isthmus_dns_sync_age_seconds.
func syncAgeGauge(syncAge func() time.Duration) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "isthmus_dns_sync_age_seconds",
		Help: "Seconds since the apiserver last showed it was there (an event or a probe): how stale answers may be.",
	}, func() float64 { return syncAge().Seconds() })
}

func typeName(t uint16) string {
	if t == 0 {
		return "other"
	}
	return dns.TypeToString[t]
}

func rcodeName(rc int) string {
	switch rc {
	case -1:
		return "other"
	case dns.RcodeBadVers:
		return "BADVERS" // miekg names 16 BADSIG (TSIG's meaning)
	}
	return dns.RcodeToString[rc]
}

// Observe counts one answered query.
func (m *Metrics) Observe(qtype uint16, rcode int, took time.Duration) {
	ti := len(metricTypes)
	for i, t := range metricTypes {
		if t == qtype {
			ti = i
			break
		}
	}
	ri := len(metricRcodes)
	for i, rc := range metricRcodes {
		if rc == rcode {
			ri = i
			break
		}
	}
	m.queries[ti][ri].Inc()
	m.latency.Observe(took.Seconds())
}

// SetIndex records the size of a newly stored index.
func (m *Metrics) SetIndex(ix *Index) {
	m.names.Set(float64(ix.Names()))
	m.services.Set(float64(ix.Services()))
	m.builds.Inc()
}
