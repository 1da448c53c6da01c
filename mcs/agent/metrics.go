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
	// What other members wrote that this agent would not take.
	recordsRefused *prometheus.CounterVec
	undecodable    *prometheus.CounterVec
	importsCapped  *prometheus.GaugeVec

	// Gateway mode.
	egressInUse       prometheus.Gauge
	egressCapacity    prometheus.Gauge
	egressWaiting     prometheus.Gauge
	egressExhaustions prometheus.Counter
	gatewayReady      prometheus.Gauge
	gatewayFallback   prometheus.Gauge
	gatewayFallbacks  prometheus.Counter
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
		recordsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "isthmus_agent_imports_refused_records_total",
			Help: "Times an import came to leave out part of another member's records (endpoint addresses outside its pod CIDRs, endpoints over the per-cluster cap, unsupported slices), by exporting cluster."},
			[]string{"cluster"}),
		undecodable: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "isthmus_agent_broker_records_undecodable_total",
			Help: "Broker records left out because they do not decode, by resource."}, []string{"resource"}),
		importsCapped: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "isthmus_agent_imports_capped",
			Help: "Exports of another cluster left out of this cluster's imports because that cluster exports more services than the per-cluster import cap, by exporting cluster."},
			[]string{"cluster"}),
		egressInUse: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "isthmus_agent_gateway_egress_ports_in_use", Help: "Gateway egress ports allocated to imports (gateway mode)."}),
		egressCapacity: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "isthmus_agent_gateway_egress_ports_capacity", Help: "Size of the gateway egress port range (gateway mode; 0 in direct mode)."}),
		egressWaiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "isthmus_agent_gateway_egress_exhausted_imports",
			Help: "ClusterSetIP imports lacking a gateway egress port because the range is full; they bypass the gateway."}),
		egressExhaustions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "isthmus_agent_gateway_egress_exhaustions_total", Help: "Times an import found the gateway egress port range full."}),
		gatewayReady: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "isthmus_agent_gateway_ready_endpoints", Help: "Ready endpoints of the local east-west gateway Service (gateway mode)."}),
		gatewayFallback: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "isthmus_agent_gateway_fallback",
			Help: "1 while no gateway endpoint is ready and derived Services hold endpoints directly (gateway mode), else 0."}),
		gatewayFallbacks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "isthmus_agent_gateway_fallbacks_total", Help: "Times the gateway had no ready endpoint and derived Services fell back to direct mode."}),
	}
	reg.MustRegister(m.exports, m.imports, m.conflicts, m.brokerConnected, m.brokerWrites, m.reconcile, m.queueDepth, m.withdrawRefused,
		m.recordsRefused, m.undecodable, m.importsCapped,
		m.egressInUse, m.egressCapacity, m.egressWaiting, m.egressExhaustions, m.gatewayReady, m.gatewayFallback, m.gatewayFallbacks)
	return m
}
