package identity

import "github.com/prometheus/client_golang/prometheus"

// Metrics is the rotators' Prometheus metrics, isthmus_xds_identity_*,
// labelled by SPIFFE id (one series per rotator, so bounded by the ids
// the server serves). One Metrics serves every Rotator of a process.
type Metrics struct {
	renewals *prometheus.CounterVec
	expiry   *prometheus.GaugeVec
}

// NewMetrics registers the metrics in reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "isthmus_xds_identity_renewals_total",
			Help: "Leaf certificate issuances by SPIFFE id and result (ok, error); the first issue counts.",
		}, []string{"id", "result"}),
		expiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "isthmus_xds_identity_cert_expiry_timestamp_seconds",
			Help: "NotAfter of the leaf certificate currently served, by SPIFFE id (Unix seconds); alert when it nears time().",
		}, []string{"id"}),
	}
	reg.MustRegister(m.renewals, m.expiry)
	return m
}

func (m *Metrics) renewed(l *Leaf) {
	if m == nil {
		return
	}
	m.renewals.WithLabelValues(l.ID.String(), "ok").Inc()
	m.expiry.WithLabelValues(l.ID.String()).Set(float64(l.NotAfter.Unix()))
}

func (m *Metrics) failed(id string) {
	if m != nil {
		m.renewals.WithLabelValues(id, "error").Inc()
	}
}
