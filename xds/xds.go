// Package xds is the xDS server role: it keeps Envoy east-west gateways
// and proxyless gRPC clients programmed with the clusterset's services.
// The source (xds/source) reads Kubernetes and the broker into a model
// (xds/model); translate (xds/translate) turns each service into
// resources; the server (xds/server) serves them over ADS. This package
// ties them together and makes each change cost only what it touches.
package xds

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sort"
	"sync"
	"sync/atomic"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/isthmus-dev/isthmus/xds/model"
	"github.com/isthmus-dev/isthmus/xds/server"
	"github.com/isthmus-dev/isthmus/xds/source"
	"github.com/isthmus-dev/isthmus/xds/translate"
)

// Models is where the controller reads the clusterset from.
type Models interface {
	Service(model.Key) *model.Service
	Clusters() map[string]*model.Cluster
}

// Controller turns model changes into server updates.
type Controller struct {
	local   model.Local
	models  Models
	srv     *server.Server
	log     *slog.Logger
	errors  prometheus.Counter
	applies prometheus.Histogram

	mu       sync.Mutex
	clusters map[string]*model.Cluster
	services map[model.Key]*model.Service
	bundles  map[model.Key]*translate.Bundle
	cla      map[string]types.Resource
	secrets  [2]*tlsv3.Secret // identity, roots
	ready    atomic.Bool
	serving  atomic.Pointer[tls.Certificate] // the ADS listener's, see ServingTLS
}

// Config is what New needs.
type Config struct {
	// Local is this cluster: its id, locality, data plane and domain.
	Local model.Local
	// Models is where the clusterset is read (the source).
	Models Models
	// Server is where the translated resources go.
	Server *server.Server
	// Registry receives the controller's metrics.
	Registry prometheus.Registerer
	Log      *slog.Logger
}

// New returns a controller feeding cfg.Server.
func New(cfg Config) (*Controller, error) {
	if cfg.Models == nil || cfg.Server == nil || cfg.Registry == nil || cfg.Log == nil {
		return nil, errors.New("an xDS controller needs models, a server, a registry and a logger")
	}
	c := &Controller{
		local: cfg.Local, models: cfg.Models, srv: cfg.Server, log: cfg.Log,
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "isthmus_xds_translation_errors_total",
			Help: "Services whose translation failed; their last good resources stay served.",
		}),
		applies: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "isthmus_xds_apply_seconds",
			Help:    "Time to translate a batch of changes and hand it to the caches.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		clusters: map[string]*model.Cluster{},
		services: map[model.Key]*model.Service{},
		bundles:  map[model.Key]*translate.Bundle{},
		cla:      map[string]types.Resource{},
	}
	for _, m := range []prometheus.Collector{c.errors, c.applies} {
		if err := cfg.Registry.Register(m); err != nil {
			return nil, fmt.Errorf("registering the xDS controller metrics: %w", err)
		}
	}
	return c, nil
}

// Ready reports nil once the first full state is in the caches.
func (c *Controller) Ready() error {
	if !c.ready.Load() {
		return fmt.Errorf("the first clusterset state is not served yet")
	}
	return nil
}

// Apply translates what ch names and updates the caches: the endpoint
// assignments that changed, and the views when a listener, route or
// cluster did.
func (c *Controller) Apply(ctx context.Context, ch source.Change) {
	timer := prometheus.NewTimer(c.applies)
	defer timer.ObserveDuration()
	c.mu.Lock()
	defer c.mu.Unlock()
	keys := map[model.Key]bool{}
	for _, k := range ch.Services {
		keys[k] = true
	}
	if ch.Clusters {
		next := c.models.Clusters()
		changed := changedClusters(c.clusters, next)
		joinedOrLeft := !sameMembers(c.clusters, next)
		c.clusters = next
		for k, s := range c.services {
			// The ingress of every service exported from here accepts
			// only the members' identities (translate.GatewayIngressChains).
			if _, exported := s.Endpoints[c.local.ClusterID]; exported && joinedOrLeft {
				keys[k] = true
			}
			for id := range changed {
				if _, ok := s.Endpoints[id]; ok {
					keys[k] = true
				}
			}
		}
		if len(changed) > 0 {
			c.log.Info("clusters changed", "clusters", sortedKeys(changed), "services", len(keys))
		}
	}
	eds := map[string]types.Resource{}
	shape := !c.ready.Load()
	for k := range keys {
		if c.applyService(k, eds) {
			shape = true
		}
	}
	if err := c.srv.UpdateEndpoints(eds); err != nil {
		c.log.Error("updating endpoint assignments", "err", err)
	}
	if shape {
		c.publishViews(ctx)
	}
	c.ready.Store(true)
}

// applyService retranslates one service, collecting changed assignments
// in eds; it reports whether the service's listeners, routes or clusters
// changed.
func (c *Controller) applyService(k model.Key, eds map[string]types.Resource) bool {
	old := c.bundles[k]
	s := c.models.Service(k)
	if s == nil {
		if old == nil {
			return false
		}
		for name := range old.Endpoints {
			eds[name] = nil
			delete(c.cla, name)
		}
		delete(c.bundles, k)
		delete(c.services, k)
		return true
	}
	b, err := translate.ForService(c.local, c.clusters, s)
	if err != nil {
		// Bad input loses nothing: the last good resources stay served.
		c.errors.Inc()
		c.log.Error("translating a service; keeping its last good resources", "service", k, "err", err)
		return false
	}
	c.services[k] = s
	shapeChanged := !translate.SameShape(old, b)
	if !shapeChanged {
		b.GatewayListeners, b.GatewayClusters, b.IngressChains = old.GatewayListeners, old.GatewayClusters, old.IngressChains
		b.GRPCListeners, b.GRPCRoutes, b.GRPCClusters = old.GRPCListeners, old.GRPCRoutes, old.GRPCClusters
	}
	for name, cla := range b.Endpoints {
		if prev, ok := c.cla[name]; !ok || !proto.Equal(prev, cla) {
			eds[name] = cla
			c.cla[name] = cla
		}
	}
	if old != nil {
		for name := range old.Endpoints {
			if _, still := b.Endpoints[name]; !still {
				eds[name] = nil
				delete(c.cla, name)
			}
		}
	}
	c.bundles[k] = b
	return shapeChanged
}

// SetGatewayCertificates installs the gateway's key pair and the trust
// bundle, served to Envoy over SDS; each rotation calls it again.
func (c *Controller) SetGatewayCertificates(ctx context.Context, chainPEM, keyPEM, bundlePEM []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	id, roots := translate.Secrets(chainPEM, keyPEM, bundlePEM)
	c.secrets = [2]*tlsv3.Secret{id, roots}
	if c.ready.Load() {
		c.publishViews(ctx)
	}
}

func (c *Controller) publishViews(ctx context.Context) {
	keys := make([]model.Key, 0, len(c.bundles))
	for k := range c.bundles {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].String() < keys[j].String() })
	bundles := make([]*translate.Bundle, 0, len(keys))
	for _, k := range keys {
		bundles = append(bundles, c.bundles[k])
	}
	gw, err := translate.GatewayResources(c.local, bundles, c.secrets[0], c.secrets[1])
	if err != nil {
		c.errors.Inc()
		c.log.Error("building the gateway view; keeping the last one", "err", err)
	} else if err := c.srv.SetView(ctx, server.GatewayView, gw); err != nil {
		c.log.Error("publishing the gateway view", "err", err)
	}
	if err := c.srv.SetView(ctx, server.GRPCView, translate.GRPCResources(bundles)); err != nil {
		c.log.Error("publishing the gRPC view", "err", err)
	}
}

func changedClusters(old, next map[string]*model.Cluster) map[string]bool {
	out := map[string]bool{}
	for id, n := range next {
		o := old[id]
		if o == nil || o.Region != n.Region || o.Zone != n.Zone || o.Healthy != n.Healthy || !slices.Equal(o.Gateways, n.Gateways) {
			out[id] = true
		}
	}
	for id := range old {
		if next[id] == nil {
			out[id] = true
		}
	}
	return out
}

// sameMembers says whether two views of the clusterset hold the same
// clusters.
func sameMembers(a, b map[string]*model.Cluster) bool {
	if len(a) != len(b) {
		return false
	}
	for id := range a {
		if _, ok := b[id]; !ok {
			return false
		}
	}
	return true
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// DebugHandler dumps a view's resources and the endpoint assignments as
// JSON (?view=gateway|grpc). Secrets are left out. Serve it only where
// asked (--debug-addr): it shows the whole clusterset's topology.
func (c *Controller) DebugHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v := server.View(r.URL.Query().Get("view"))
		if v != server.GatewayView && v != server.GRPCView {
			http.Error(w, "want ?view=gateway or ?view=grpc", http.StatusBadRequest)
			return
		}
		out := map[string][]json.RawMessage{}
		res := c.srv.ViewResources(v)
		res[resource.EndpointType] = nil
		for _, e := range c.srv.Endpoints() {
			res[resource.EndpointType] = append(res[resource.EndpointType], e)
		}
		for t, rs := range res {
			if t == resource.SecretType {
				continue
			}
			for _, r := range rs {
				b, err := protojson.Marshal(r)
				if err != nil {
					http.Error(w, err.Error(), http.StatusInternalServerError)
					return
				}
				out[t] = append(out[t], b)
			}
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(out)
	})
}
