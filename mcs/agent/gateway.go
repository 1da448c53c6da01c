package agent

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/wait"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/merge"
)

// Data plane modes (docs/architecture.md). In direct mode the derived Service's
// EndpointSlices hold the endpoints the locality policy chooses; in
// gateway mode they hold the local east-west gateway's pods, one egress
// port per service port, and the gateway's xDS chooses the endpoints.
const (
	DataplaneDirect  = "direct"
	DataplaneGateway = "gateway"
)

// What gateway mode reports.
const (
	// ConditionGatewayEgress on a ClusterSetIP ServiceImport in gateway
	// mode says whether each of its ports has a gateway egress port.
	ConditionGatewayEgress = "isthmus.dev/GatewayEgress"
	ReasonEgressAllocated  = "EgressPortsAllocated"
	ReasonEgressExhausted  = "EgressPortsExhausted"
	// ReasonEgressReassigned: an Event on a ServiceImport whose recorded
	// egress port could not be kept.
	ReasonEgressReassigned = "EgressPortReassigned"
	// Event reasons on the gateway Service.
	ReasonNoReadyGateway = "NoReadyGateway"
	ReasonGatewayReady   = "GatewayReady"
)

// checkGatewayConfig fills gateway mode's defaults and checks them.
func checkGatewayConfig(cfg *Config) error {
	switch cfg.Dataplane {
	case "":
		cfg.Dataplane = DataplaneDirect
	case DataplaneDirect, DataplaneGateway:
	default:
		return fmt.Errorf("data plane %q: want %s or %s", cfg.Dataplane, DataplaneDirect, DataplaneGateway)
	}
	if cfg.Dataplane != DataplaneGateway {
		return nil
	}
	if cfg.GatewayNamespace == "" && cfg.GatewayName == "" {
		cfg.GatewayNamespace, cfg.GatewayName = "isthmus-system", "isthmus-gateway"
	}
	if errs := validation.IsDNS1123Label(cfg.GatewayNamespace); len(errs) > 0 {
		return fmt.Errorf("gateway Service namespace %q: %s", cfg.GatewayNamespace, strings.Join(errs, "; "))
	}
	if errs := validation.IsDNS1035Label(cfg.GatewayName); len(errs) > 0 {
		return fmt.Errorf("gateway Service name %q: %s", cfg.GatewayName, strings.Join(errs, "; "))
	}
	if cfg.EgressPortMin == 0 && cfg.EgressPortMax == 0 {
		cfg.EgressPortMin, cfg.EgressPortMax = brokerv1.DefaultEgressPortMin, brokerv1.DefaultEgressPortMax
	}
	if cfg.GatewayIngressPort == 0 {
		cfg.GatewayIngressPort = brokerv1.DefaultGatewayIngressPort
	}
	if cfg.GatewayIngressPort < 1 || cfg.GatewayIngressPort > 65535 {
		return fmt.Errorf("gateway ingress port %d is not a port", cfg.GatewayIngressPort)
	}
	return checkEgressRange(cfg.EgressPortMin, cfg.EgressPortMax)
}

func (a *Agent) gatewayMode() bool { return a.cfg.Dataplane == DataplaneGateway }

func (a *Agent) gatewayKey() string { return a.cfg.GatewayNamespace + "/" + a.cfg.GatewayName }

// seedEgress loads the egress ports recorded on this cluster's
// ServiceImports into a fresh allocator, before this replica, now leading,
// allocates any. It reads them from the apiserver rather than from the
// informer's cache: a cache a moment behind the previous leader's last
// writes would hand out a port that leader had just recorded. It retries
// until it succeeds or ctx ends.
func (a *Agent) seedEgress(ctx context.Context) error {
	var list *mcsv1beta1.ServiceImportList
	err := wait.PollUntilContextCancel(ctx, time.Second, true, func(ctx context.Context) (bool, error) {
		var err error
		list, err = a.cfg.LocalMCS.MulticlusterV1beta1().ServiceImports(metav1.NamespaceAll).List(ctx,
			metav1.ListOptions{LabelSelector: discoveryv1.LabelManagedBy + "=" + brokerv1.ManagedBy})
		if err != nil {
			a.log.Warn("reading the recorded gateway egress ports, will retry", "err", err)
		}
		return err == nil, nil
	})
	if err != nil {
		return fmt.Errorf("reading the recorded gateway egress ports: %w", err)
	}
	a.egress = newEgressAllocator(a.cfg.EgressPortMin, a.cfg.EgressPortMax)
	var claims []egressClaim
	for _, si := range list.Items {
		v, ok := si.Annotations[brokerv1.AnnotationEgressPorts]
		if !ok {
			continue
		}
		ports, err := brokerv1.ParseEgressPorts(v)
		if err != nil {
			a.log.Warn("ignoring an unreadable gateway egress annotation; the import gets new ports",
				"import", si.Namespace+"/"+si.Name, "err", err)
			continue
		}
		claims = append(claims, egressClaim{key: si.Namespace + "/" + si.Name, created: si.CreationTimestamp.Time, ports: ports})
	}
	byKey := map[string]*mcsv1beta1.ServiceImport{}
	for i := range list.Items {
		byKey[list.Items[i].Namespace+"/"+list.Items[i].Name] = &list.Items[i]
	}
	for _, d := range a.egress.seed(claims) {
		// Only a changed range or a hand-edited annotation gets here; a
		// collision is never silent.
		a.log.Warn("gateway egress port given up; the import gets a new one", "import", d.key, "detail", d.why)
		a.events.Event(byKey[d.key], corev1.EventTypeWarning, ReasonEgressReassigned,
			"Gateway egress port "+d.why+"; this import gets a new one.")
	}
	a.updateEgressGauges()
	return nil
}

// gatewayCarries reports whether the east-west gateway can carry an
// import: a ClusterSetIP service whose ports are all TCP. The gateway's
// egress listeners proxy TCP only (the xDS server emits no UDP or SCTP
// listener), so an import with another protocol stays direct, as headless
// ones do, rather than sending those ports to a gateway port nothing
// listens on.
func gatewayCarries(r merge.Result) bool {
	if r.Type != brokerv1.ClusterSetIP || len(r.Ports) == 0 {
		return false
	}
	for _, p := range r.Ports {
		if p.Protocol != corev1.ProtocolTCP && p.Protocol != "" {
			return false
		}
	}
	return true
}

// assignEgress allocates the egress ports of a ClusterSetIP import, and
// sets aside those of an import that is not one (any more).
func (a *Agent) assignEgress(key string, r merge.Result) *egressAssignment {
	if !a.gatewayMode() {
		return nil
	}
	var want []portKey
	if gatewayCarries(r) {
		for _, p := range r.Ports {
			want = append(want, portKey{p.Protocol, p.Port})
		}
	}
	as := a.egress.assign(key, want)
	if as.NewlyExhausted {
		a.metrics.egressExhaustions.Inc()
	}
	a.updateEgressGauges()
	return &as
}

// egressWritten frees the ports an import gave up, now that its
// annotation no longer lists them, and retries imports waiting for one.
func (a *Agent) egressWritten(key string) {
	if a.gatewayMode() {
		a.requeue(a.egress.committed(key))
	}
}

// releaseEgress frees every port of an import that is gone.
func (a *Agent) releaseEgress(key string) {
	if a.gatewayMode() {
		a.requeue(a.egress.release(key))
	}
}

func (a *Agent) requeue(keys []string) {
	for _, k := range keys {
		a.imports.enqueue(k)
	}
	a.updateEgressGauges()
}

func (a *Agent) updateEgressGauges() {
	inUse, waiting := a.egress.usage()
	a.metrics.egressInUse.Set(float64(inUse))
	a.metrics.egressWaiting.Set(float64(waiting))
}

// egressCondition is the ServiceImport's GatewayEgress condition.
func (a *Agent) egressCondition(as *egressAssignment, generation int64) metav1.Condition {
	c := metav1.Condition{Type: ConditionGatewayEgress, Status: metav1.ConditionTrue, Reason: ReasonEgressAllocated,
		Message:            "Gateway egress ports (service port=egress port): " + brokerv1.FormatEgressPorts(as.Ports) + ".",
		ObservedGeneration: generation}
	if !as.Complete() {
		c.Status, c.Reason, c.Message = metav1.ConditionFalse, ReasonEgressExhausted, a.exhaustedMessage(as)
	}
	return c
}

func (a *Agent) exhaustedMessage(as *egressAssignment) string {
	var missing []string
	for _, k := range as.Missing {
		missing = append(missing, k.String())
	}
	return fmt.Sprintf("No free gateway egress port for %s: every port of %d-%d is taken. Widen the agent's --egress-ports or remove imports; "+
		"until then this service's ClusterSetIP traffic goes straight to the endpoints chosen by locality, not through the gateway.",
		strings.Join(missing, ", "), a.cfg.EgressPortMin, a.cfg.EgressPortMax)
}

// setEgressCondition sets or, outside gateway mode and for headless
// imports, removes the GatewayEgress condition in status.
func (a *Agent) setEgressCondition(status *mcsv1beta1.ServiceImportStatus, as *egressAssignment, r merge.Result, generation int64) {
	if as == nil || r.Type != brokerv1.ClusterSetIP {
		meta.RemoveStatusCondition(&status.Conditions, ConditionGatewayEgress)
		return
	}
	meta.SetStatusCondition(&status.Conditions, a.egressCondition(as, generation))
}

// gatewayEndpoints are the ready endpoints of the local gateway Service,
// one merged list per address family, in a stable order.
func (a *Agent) gatewayEndpoints() map[discoveryv1.AddressType][]discoveryv1.Endpoint {
	out := map[discoveryv1.AddressType][]discoveryv1.Endpoint{}
	seen := map[string]bool{}
	for _, s := range slicesIn(a.localSlices, a.gatewayKey()) {
		for _, e := range s.Endpoints {
			if e.Conditions.Ready != nil && !*e.Conditions.Ready || len(e.Addresses) == 0 || seen[e.Addresses[0]] {
				continue
			}
			seen[e.Addresses[0]] = true
			ready := true
			// Only what kube-proxy needs: the address, readiness, and the
			// node and zone the pod runs in.
			out[s.AddressType] = append(out[s.AddressType], discoveryv1.Endpoint{
				Addresses:  e.Addresses,
				Conditions: discoveryv1.EndpointConditions{Ready: &ready, Serving: &ready},
				NodeName:   e.NodeName,
				Zone:       e.Zone,
			})
		}
	}
	for _, eps := range out {
		slices.SortFunc(eps, func(x, y discoveryv1.Endpoint) int { return slices.Compare(x.Addresses, y.Addresses) })
	}
	return out
}

// maxGatewayAddresses is how many gateway addresses a Cluster record holds
// (the CRD's bound).
const maxGatewayAddresses = 16

// gatewayAddresses are the ready gateway pods' addresses at the ingress
// port, the part of this cluster's record through which other clusters'
// gateways reach this one (over the tunnel, which routes pod CIDRs); the
// first 16 in address order.
func (a *Agent) gatewayAddresses() []brokerv1.GatewayAddress {
	if !a.gatewayMode() {
		return nil
	}
	var out []brokerv1.GatewayAddress
	endpoints := a.gatewayEndpoints()
	for _, fam := range []discoveryv1.AddressType{discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6} {
		for _, e := range endpoints[fam] {
			out = append(out, brokerv1.GatewayAddress{Address: e.Addresses[0], Port: a.cfg.GatewayIngressPort})
		}
	}
	if len(out) > maxGatewayAddresses {
		out = out[:maxGatewayAddresses]
	}
	return out
}

// gatewaySlices are the derived Service's EndpointSlices in gateway mode:
// the ready gateway pods of each of the Service's families, with each
// service port numbered as its egress port, so that kube-proxy sends
// ClusterSetIP:port to gateway:egress. Nil means the gateway cannot carry
// this import now (a port lacks an egress port, or no gateway pod of the
// Service's families is ready) and the caller falls back to direct mode.
func (a *Agent) gatewaySlices(ns, name string, derived *corev1.Service, r merge.Result, as *egressAssignment, owner metav1.OwnerReference) []*discoveryv1.EndpointSlice {
	if as == nil || !as.Complete() || derived == nil || !gatewayCarries(r) {
		return nil
	}
	egress := map[portKey]int32{}
	for _, p := range as.Ports {
		egress[portKey{p.Protocol, p.Port}] = p.Egress
	}
	var ports []discoveryv1.EndpointPort
	for _, p := range r.Ports {
		ports = append(ports, discoveryv1.EndpointPort{Name: new(p.Name), Protocol: new(p.Protocol), AppProtocol: p.AppProtocol,
			Port: new(egress[portKey{p.Protocol, p.Port}])})
	}
	endpoints := a.gatewayEndpoints()
	var out []*discoveryv1.EndpointSlice
	for _, fam := range derived.Spec.IPFamilies {
		at := discoveryv1.AddressType(fam)
		if len(endpoints[at]) == 0 {
			continue
		}
		out = append(out, &discoveryv1.EndpointSlice{
			TypeMeta: metav1.TypeMeta{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice"},
			ObjectMeta: metav1.ObjectMeta{
				// A cluster id holds no dot, so this name never meets a
				// direct-mode slice's.
				Name: derived.Name + ".gateway-" + strings.ToLower(string(at)), Namespace: ns,
				Labels: map[string]string{
					discoveryv1.LabelManagedBy:   brokerv1.ManagedBy,
					discoveryv1.LabelServiceName: derived.Name,
					labelDerivedFor:              name,
					labelSliceRole:               roleGateway,
				},
				OwnerReferences: []metav1.OwnerReference{owner}},
			AddressType: at,
			Endpoints:   endpoints[at],
			Ports:       ports,
		})
	}
	return out
}

// watchGateway follows the readiness of the local gateway's pods: it
// requeues every import when they change, and reports (Event on the
// gateway Service, log, metrics) when none is ready and the derived
// Services fall back to direct mode, and when one is ready again.
func (a *Agent) watchGateway(ctx context.Context) {
	ref := &corev1.ObjectReference{APIVersion: "v1", Kind: "Service", Namespace: a.cfg.GatewayNamespace, Name: a.cfg.GatewayName}
	first, wasReady := true, false
	for {
		n := 0
		for _, eps := range a.gatewayEndpoints() {
			n += len(eps)
		}
		a.metrics.gatewayReady.Set(float64(n))
		ready := n > 0
		switch {
		case !ready && (first || wasReady):
			a.metrics.gatewayFallback.Set(1)
			a.metrics.gatewayFallbacks.Inc()
			msg := fmt.Sprintf("No ready endpoint behind the east-west gateway Service %s: ClusterSetIP traffic goes straight to the endpoints "+
				"the direct-mode locality policy chooses (this cluster's while any is ready) until a gateway pod is ready.", a.gatewayKey())
			a.events.Event(ref, corev1.EventTypeWarning, ReasonNoReadyGateway, msg)
			a.log.Warn("no ready gateway endpoint; derived Services fall back to direct mode", "gateway", a.gatewayKey())
		case ready && (first || !wasReady):
			a.metrics.gatewayFallback.Set(0)
			if !first {
				a.events.Event(ref, corev1.EventTypeNormal, ReasonGatewayReady,
					fmt.Sprintf("%d ready endpoint(s) behind the east-west gateway Service %s: ClusterSetIP traffic goes through the gateway again.", n, a.gatewayKey()))
				a.log.Info("gateway ready again; derived Services point at it", "gateway", a.gatewayKey(), "endpoints", n)
			}
		}
		if !first {
			a.importsAll()
			// Other clusters' gateways learn the new addresses from the
			// record; the heartbeat retries a publication that fails.
			if err := a.publishCluster(ctx); err != nil {
				a.log.Warn("publishing the gateway's addresses", "err", err)
			}
		}
		first, wasReady = false, ready
		select {
		case <-ctx.Done():
			return
		case <-a.gatewayChanged:
		}
	}
}

// gatewaySliceChanged is called for every change of the gateway Service's
// slices; it never blocks the informer.
func (a *Agent) gatewaySliceChanged() {
	select {
	case a.gatewayChanged <- struct{}{}:
	default:
	}
}
