package tunnel

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the tunnel's Prometheus metrics. Device counters are read
// through wgctrl at scrape time (the collector below), so they are never
// stale and cost nothing between scrapes.
type metrics struct {
	t *Tunnel

	probeRTT          *prometheus.HistogramVec
	probeFailures     *prometheus.CounterVec
	reconcileDuration *prometheus.HistogramVec
	reconcileErrors   *prometheus.CounterVec
	deviceOps         *prometheus.CounterVec
	statusWrites      prometheus.Counter

	info, peers, peerState, handshake, rx, tx, conflicts *prometheus.Desc
}

func newMetrics(t *Tunnel) *metrics {
	return &metrics{
		t: t,
		probeRTT: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "isthmus_tunnel_probe_rtt_seconds",
			Help:    "Round-trip time of the UDP echo probe through the tunnel to a remote cluster's tunnel address.",
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 17), // 50 µs to ~3.3 s
		}, []string{"remote_cluster"}),
		probeFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "isthmus_tunnel_probe_failures_total",
			Help: "Echo probes through the tunnel that got no reply in time.",
		}, []string{"remote_cluster"}),
		reconcileDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "isthmus_tunnel_reconcile_duration_seconds",
			Help:    "Time of one pass bringing peers and routes in step with the cluster records, by kind: full (start, resync: reads the device and routes) or change (applies the changed records only).",
			Buckets: prometheus.ExponentialBuckets(50e-6, 4, 10),
		}, []string{"kind"}),
		deviceOps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "isthmus_tunnel_reconcile_operations_total",
			Help: "Device and routing-table operations made by reconcile passes, by kind (read_device, list_routes, add_peer, update_peer, remove_peer, replace_route, delete_route).",
		}, []string{"op"}),
		statusWrites: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "isthmus_tunnel_status_writes_total",
			Help: "Writes of the tunnel's status (status.tunnel and the Tunnel* conditions) to the cluster record.",
		}),
		reconcileErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "isthmus_tunnel_reconcile_errors_total",
			Help: "Failed operations while reconciling, by kind.",
		}, []string{"op"}),
		info: prometheus.NewDesc("isthmus_tunnel_info", "The WireGuard device: implementation (kernel or userspace) and whether TUN offload was negotiated.",
			[]string{"device", "implementation", "offload", "public_key"}, nil),
		peers: prometheus.NewDesc("isthmus_tunnel_peers", "Remote clusters by tunnel state.", []string{"state"}, nil),
		peerState: prometheus.NewDesc("isthmus_tunnel_peer_state", "1 for each remote cluster's current tunnel state.",
			[]string{"remote_cluster", "state"}, nil),
		handshake: prometheus.NewDesc("isthmus_tunnel_peer_last_handshake_timestamp_seconds", "Unix time of the last WireGuard handshake with a remote cluster (0 before the first).",
			[]string{"remote_cluster"}, nil),
		rx: prometheus.NewDesc("isthmus_tunnel_peer_receive_bytes_total", "Bytes received from a remote cluster's gateway, as the device counts them.",
			[]string{"remote_cluster"}, nil),
		tx: prometheus.NewDesc("isthmus_tunnel_peer_transmit_bytes_total", "Bytes sent to a remote cluster's gateway, as the device counts them.",
			[]string{"remote_cluster"}, nil),
		conflicts: prometheus.NewDesc("isthmus_tunnel_conflicts", "1 for each remote cluster left unpeered, by kind (cidr, key, invalid, refused: a range no member may claim).",
			[]string{"remote_cluster", "kind"}, nil),
	}
}

// register adds the tunnel's metrics to reg.
func (t *Tunnel) register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{t.metrics.probeRTT, t.metrics.probeFailures, t.metrics.reconcileDuration, t.metrics.reconcileErrors,
		t.metrics.deviceOps, t.metrics.statusWrites, t.metrics} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.info, m.peers, m.peerState, m.handshake, m.rx, m.tx, m.conflicts} {
		ch <- d
	}
}

func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	dev, peers, err := m.t.Status()
	if dev == nil {
		return
	}
	m.t.mu.Lock()
	pub := m.t.pub.String()
	m.t.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(m.info, prometheus.GaugeValue, 1, dev.Name, string(dev.Implementation), strconv.FormatBool(dev.Offload), pub)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(m.peers, err)
		return
	}
	counts := map[string]int{}
	for _, s := range []string{StateConnecting, StateConnected, StateError, StatePending, StateInvalid, StateCIDRConflict, StateKeyConflict, StateRefused} {
		counts[s] = 0
	}
	for _, p := range peers {
		counts[p.State]++
		ch <- prometheus.MustNewConstMetric(m.peerState, prometheus.GaugeValue, 1, p.Cluster, p.State)
		switch p.State {
		case StateCIDRConflict:
			ch <- prometheus.MustNewConstMetric(m.conflicts, prometheus.GaugeValue, 1, p.Cluster, "cidr")
		case StateKeyConflict:
			ch <- prometheus.MustNewConstMetric(m.conflicts, prometheus.GaugeValue, 1, p.Cluster, "key")
		case StateInvalid:
			ch <- prometheus.MustNewConstMetric(m.conflicts, prometheus.GaugeValue, 1, p.Cluster, "invalid")
		case StateRefused:
			ch <- prometheus.MustNewConstMetric(m.conflicts, prometheus.GaugeValue, 1, p.Cluster, "refused")
		}
		if p.Peer == nil {
			continue
		}
		hs := 0.0
		if !p.Peer.LastHandshakeTime.IsZero() {
			hs = float64(p.Peer.LastHandshakeTime.UnixNano()) / 1e9
		}
		ch <- prometheus.MustNewConstMetric(m.handshake, prometheus.GaugeValue, hs, p.Cluster)
		ch <- prometheus.MustNewConstMetric(m.rx, prometheus.CounterValue, float64(p.Peer.ReceiveBytes), p.Cluster)
		ch <- prometheus.MustNewConstMetric(m.tx, prometheus.CounterValue, float64(p.Peer.TransmitBytes), p.Cluster)
	}
	for s, n := range counts {
		ch <- prometheus.MustNewConstMetric(m.peers, prometheus.GaugeValue, float64(n), s)
	}
}
