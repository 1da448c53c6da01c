// Package fleet joins the members of a test/cluster clusterset to its
// broker with mcs/setup and runs their agents in the calling process, each
// with its own broker identity and the daemon's client settings; the
// benchmarks share it.
package fleet

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/isthmus-dev/isthmus/mcs/agent"
	brokerclient "github.com/isthmus-dev/isthmus/mcs/api/broker/generated/clientset/versioned"
	"github.com/isthmus-dev/isthmus/mcs/setup"
	"github.com/isthmus-dev/isthmus/test/cluster"
)

// Member is one joined member and its running agent.
type Member struct {
	ID       string
	Cluster  *cluster.Cluster
	Agent    *agent.Agent
	Registry *prometheus.Registry
	cfg      agent.Config
	cancel   context.CancelFunc
	done     chan struct{}
}

// Join installs the broker and joins the members as "a", "b", "c", ...
// without starting their agents; tune, when set, adjusts each agent's
// configuration.
func Join(ctx context.Context, cs *cluster.Clusterset, log *slog.Logger, tune func(*agent.Config)) ([]*Member, error) {
	hub, err := setup.NewClients(cs.Broker.Config)
	if err != nil {
		return nil, err
	}
	if err := setup.InstallBroker(ctx, hub, setup.BrokerOptions{}, io.Discard); err != nil {
		return nil, err
	}
	var out []*Member
	for i, m := range cs.Members {
		id := string(rune('a' + i))
		member, err := setup.NewClients(m.Config)
		if err != nil {
			return nil, err
		}
		if _, err := setup.Join(ctx, hub, member, setup.JoinOptions{ClusterID: id}, io.Discard); err != nil {
			return nil, err
		}
		brokerCfg, brokerNS, err := setup.BrokerConfig(ctx, member.Kube, "")
		if err != nil {
			return nil, err
		}
		// As `isthmus agent` does by default (--kube-api-qps, --kube-api-burst).
		brokerCfg.QPS, brokerCfg.Burst = 50, 100
		broker, err := kubernetes.NewForConfig(brokerCfg)
		if err != nil {
			return nil, err
		}
		brokerClient, err := brokerclient.NewForConfig(brokerCfg)
		if err != nil {
			return nil, err
		}
		localMCS, err := mcsclient.NewForConfig(m.Config)
		if err != nil {
			return nil, err
		}
		// Pod and Service ranges as the agent role publishes them: importers
		// take another cluster's endpoints only inside its pod ranges.
		cfg := agent.Config{ClusterID: id, BrokerNamespace: brokerNS,
			PodCIDRs: []string{m.PodCIDR.String()}, ServiceCIDRs: []string{m.ServiceCIDR.String()},
			Local: member.Kube, LocalMCS: localMCS, Broker: broker, BrokerClient: brokerClient, BrokerDynamic: dynamic.NewForConfigOrDie(brokerCfg),
			Log: log}
		if tune != nil {
			tune(&cfg)
		}
		out = append(out, &Member{ID: id, Cluster: m, cfg: cfg})
	}
	return out, nil
}

// Start runs the member's agent with a new registry and waits until it is
// ready (synced, heartbeat renewed). It stops a previous run first.
func (m *Member) Start(ctx context.Context, log *slog.Logger) error {
	m.Stop()
	m.Registry = prometheus.NewRegistry()
	cfg := m.cfg
	cfg.Registry = m.Registry
	ag, err := agent.New(cfg)
	if err != nil {
		return err
	}
	actx, cancel := context.WithCancel(ctx)
	m.Agent, m.cancel, m.done = ag, cancel, make(chan struct{})
	go func(done chan struct{}) {
		defer close(done)
		if err := ag.Run(actx); err != nil && actx.Err() == nil {
			log.Error("agent stopped", "cluster", m.ID, "err", err)
		}
	}(m.done)
	for ag.Ready() != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// Stop ends the member's agent, if it runs, and waits for it.
func (m *Member) Stop() {
	if m.cancel != nil {
		m.cancel()
		<-m.done
		m.cancel = nil
	}
}

// JoinAndRun joins the members and starts every agent.
func JoinAndRun(ctx context.Context, cs *cluster.Clusterset, log *slog.Logger, tune func(*agent.Config)) ([]*Member, error) {
	ms, err := Join(ctx, cs, log, tune)
	if err != nil {
		return nil, err
	}
	for _, m := range ms {
		if err := m.Start(ctx, log); err != nil {
			return nil, fmt.Errorf("starting %s's agent: %w", m.ID, err)
		}
	}
	return ms, nil
}

// Metric sums the samples of one metric family in the member's registry
// whose labels include every name=value pair in match; for a histogram it
// sums the sample counts.
func (m *Member) Metric(name string, match ...string) float64 {
	n, _ := m.metric(name, match)
	return n
}

// Seconds is Metric's histogram sample sum: the time the observations of a
// histogram of seconds add up to.
func (m *Member) Seconds(name string, match ...string) float64 {
	_, sum := m.metric(name, match)
	return sum
}

func (m *Member) metric(name string, match []string) (n, hsum float64) {
	families, err := m.Registry.Gather()
	if err != nil {
		return 0, 0
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	next:
		for _, s := range f.GetMetric() {
			for i := 0; i+1 < len(match); i += 2 {
				found := false
				for _, l := range s.GetLabel() {
					found = found || l.GetName() == match[i] && l.GetValue() == match[i+1]
				}
				if !found {
					continue next
				}
			}
			n += s.GetGauge().GetValue() + s.GetCounter().GetValue() + float64(s.GetHistogram().GetSampleCount())
			hsum += s.GetHistogram().GetSampleSum()
		}
	}
	return n, hsum
}
