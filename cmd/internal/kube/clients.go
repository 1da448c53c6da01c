package kube

import (
	"fmt"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	brokerclient "github.com/isthmus-dev/isthmus/mcs/api/broker/generated/clientset/versioned"
)

// Clients are the clients of one apiserver that the Isthmus roles use,
// built from one configuration.
type Clients struct {
	Config  *rest.Config
	Kube    kubernetes.Interface
	Dynamic dynamic.Interface
	MCS     mcsclient.Interface
	// BrokerAPI is the typed client of the broker's own records
	// (broker.isthmus.dev), meaningful for the broker's apiserver.
	BrokerAPI brokerclient.Interface
}

// NewClients builds the typed, dynamic and MCS clients for cfg, after
// setting its request rate (qps ≤ 0 keeps client-go's default).
func NewClients(cfg *rest.Config, qps float32, burst int) (*Clients, error) {
	cfg = rest.CopyConfig(cfg)
	if qps > 0 {
		cfg.QPS, cfg.Burst = qps, burst
	}
	k, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("building a client for %s: %w", cfg.Host, err)
	}
	d, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("building a dynamic client for %s: %w", cfg.Host, err)
	}
	m, err := mcsclient.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("building an MCS client for %s: %w", cfg.Host, err)
	}
	b, err := brokerclient.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("building a broker client for %s: %w", cfg.Host, err)
	}
	return &Clients{Config: cfg, Kube: k, Dynamic: d, MCS: m, BrokerAPI: b}, nil
}
