package server

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	connected       *prometheus.GaugeVec
	refused         prometheus.Counter
	pushes          *prometheus.CounterVec
	pushedResources *prometheus.CounterVec
	nacks           *prometheus.CounterVec
	pushLatency     *prometheus.HistogramVec
	resources       *prometheus.GaugeVec
	limited         *prometheus.CounterVec
	unauthenticated *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		connected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "isthmus_xds_connected_nodes", Help: "xDS clients connected, by view (gateway, grpc).",
		}, []string{"view"}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "isthmus_xds_refused_nodes_total", Help: "xDS streams refused (a node of another cluster, an unknown role, a gateway node from an address that is no gateway pod, a request naming another node than its stream's first).",
		}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "isthmus_xds_pushes_total", Help: "Discovery responses sent, by resource type.",
		}, []string{"type"}),
		pushedResources: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "isthmus_xds_pushed_resources_total", Help: "Resources sent in discovery responses, by type.",
		}, []string{"type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "isthmus_xds_nacks_total", Help: "Responses rejected by clients, by resource type.",
		}, []string{"type"}),
		pushLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "isthmus_xds_push_latency_seconds",
			Help:    "From a change of a resource type to a response of that type leaving the server.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"type"}),
		resources: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "isthmus_xds_resources", Help: "Resources served, by view and type.",
		}, []string{"view", "type"}),
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "isthmus_xds_limited_streams_total", Help: "xDS streams closed for going over a cap, by cap (streams: open streams; names: resource names in one request; types: type URLs on one stream).",
		}, []string{"limit"}),
		unauthenticated: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "isthmus_xds_unauthenticated_streams_total", Help: "xDS streams refused for their credentials, by reason (no_token, invalid_token: the TokenReview refused it, e.g. another audience or expired; wrong_service_account: a valid token of another ServiceAccount than the gateway's asked for the gateway view; review_failed: the TokenReview itself failed).",
		}, []string{"reason"}),
	}
	for _, c := range []prometheus.Collector{m.connected, m.refused, m.pushes, m.pushedResources, m.nacks, m.pushLatency, m.resources, m.limited, m.unauthenticated} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
