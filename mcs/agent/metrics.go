package agent

import "github.com/prometheus/client_golang/prometheus"

// metrics are the agent's Prometheus metrics.
type metrics struct {
	exports         prometheus.Gauge
	imports         prometheus.Gauge
	conflicts       prometheus.Gauge
	brokerConnected prometheus.Gauge
	brokerWrites    *prometheus.CounterVec
	reconcile       *prometheus.HistogramVec
	queueDepth      *prometheus.GaugeVec
	withdrawRefused prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		exports: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "isthmus_agent_exports", Help: "ServiceExports of this cluster currently published to the broker."}),
		imports: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "isthmus_agent_imports", Help: "ServiceImports this agent maintains in this cluster."}),
		conflicts: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "isthmus_agent_conflicts", Help: "Exports of this cluster whose Conflict condition is True."}),
		brokerConnected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "isthmus_agent_broker_connected", Help: "1 while the last heartbeat to the broker succeeded, else 0."}),
		brokerWrites: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "isthmus_agent_writes_total", Help: "Writes the agent made, by target cluster (local, broker) and verb."},
			[]string{"target", "verb"}),
		reconcile: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "isthmus_agent_reconcile_seconds", Help: "Time to reconcile one key, by controller and result.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}, []string{"controller", "result"}),
		queueDepth: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "isthmus_agent_queue_depth", Help: "Keys waiting in each controller's work queue."}, []string{"controller"}),
		withdrawRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "isthmus_agent_mass_withdrawal_refused_total",
			Help: "Import deletions refused because the broker view looked empty or unsynced."}),
	}
	reg.MustRegister(m.exports, m.imports, m.conflicts, m.brokerConnected, m.brokerWrites, m.reconcile, m.queueDepth, m.withdrawRefused)
	return m
}
