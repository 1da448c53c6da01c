package agent

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/merge"
)

// The import of one service is planned, then applied (docs/architecture.md,
// "plan and apply"). The plan is a function of the records it is given and
// nothing else: no apiserver, no informer. import.go gathers its input from
// the caches, apply.go writes what it says. The input names every record
// taken from other clusters, so that what crosses the trust boundary is
// visible in one place.

// importInput is everything the plan of one service's import reads.
type importInput struct {
	Namespace, Name string
	// Local is this cluster's id, Region its region.
	Local, Region string
	// Exports are every cluster's export record of the service, as the
	// broker holds them (this cluster's too).
	Exports []*brokerv1.ExportedService
	// Endpoints are each exporting cluster's EndpointSlices of the
	// service: the broker's copies for other clusters, this cluster's own
	// slices (in their broker form) for itself, so they stay current while
	// the broker is away.
	Endpoints map[string][]*discoveryv1.EndpointSlice
	// Clusters say how each exporting cluster stands now.
	Clusters map[string]clusterState
	// Derived is the derived Service as it stands here, nil when there is
	// none yet: the ServiceImport's ClusterSetIPs are its ClusterIPs, and
	// the gateway's slices follow its families.
	Derived *corev1.Service
	// Gateway is gateway mode's one seam; nil in direct mode.
	Gateway importGateway
	// Capped names the clusters whose export of this service the
	// per-source import cap leaves out (quota.go): they contribute
	// nothing. MaxImports is that cap, for the condition saying so.
	Capped     map[string]bool
	MaxImports int
	// Families are this cluster's Service IP families (of its service
	// CIDRs); nil when not configured, and then any export is taken.
	Families []corev1.IPFamily
	// TrustUnclaimed takes the endpoints of a cluster that claims no pod
	// CIDRs as they are. Gateway mode does: traffic reaches another
	// cluster's endpoints only through that cluster's own gateway. In
	// direct mode such endpoints are left out, as nothing routes to them.
	TrustUnclaimed bool
}

// clusterState is what this cluster knows of an exporting cluster.
type clusterState struct {
	// Health is its heartbeat's: a withdrawn cluster's exports leave the
	// import.
	Health brokerv1.Health
	// Unreachable: traffic should go elsewhere while another cluster can
	// take it (brokerv1.Reachability).
	Unreachable bool
	// Region places it for the locality policy.
	Region string
	// PodCIDRs are the ranges its Cluster record claims that pass
	// brokerv1.CheckClaim; its endpoint addresses must lie inside them.
	// Claimed is false when it claims none (or has no record yet).
	PodCIDRs []netip.Prefix
	Claimed  bool
	// Joined is the server-set creation time of its Cluster record: none
	// of its exports may claim to be older (brokerv1.EffectiveExportTime).
	Joined time.Time
}

// importGateway is what gateway mode adds to the plan: an egress port for
// each service port, and the local gateway's ready pods to send traffic
// to. It is the only place gateway mode enters the plan.
type importGateway interface {
	// egress gives the import key, as merged, its egress ports, keeping
	// those it holds; not a ClusterSetIP import the gateway can carry, it
	// gives none.
	egress(key string, r merge.Result) *egressAssignment
	// endpoints are the gateway's ready pods, per address family.
	endpoints() map[discoveryv1.AddressType][]discoveryv1.Endpoint
}

// importPlan is what this cluster should hold for one service. Owner
// references are left to apply, which knows the ServiceImport's UID.
type importPlan struct {
	// Remove: no live cluster exports the service; the import goes.
	Remove bool
	Merged merge.Result
	// Egress is the import's gateway egress allocation; nil in direct mode.
	Egress *egressAssignment
	Import *mcsv1beta1.ServiceImport
	// Derived is the Service holding the ClusterSetIP; nil for a headless
	// import, which has none.
	Derived *corev1.Service
	// Slices are the MCS slices (every live cluster's endpoints) and the
	// derived Service's (the locality choice, or the gateway), by name.
	Slices map[string]*discoveryv1.EndpointSlice
	// Refused says what of other clusters' records was left out
	// (trust.go), by exporting cluster, for the ServiceImport's condition
	// and the metric; empty when nothing.
	Refused map[string][]string
	// Capped are the clusters whose export the import cap left out,
	// sorted, for the ServiceImport's condition.
	Capped []string
	// FamilyNotSupported says why a ClusterSetIP import gets no derived
	// Service here: none of the export's IP families is this cluster's, so
	// the apiserver could allocate no ClusterSetIP that reaches its
	// endpoints. Empty when it does.
	FamilyNotSupported string

	in        importInput
	byCluster map[string][]*discoveryv1.EndpointSlice
	gateway   map[discoveryv1.AddressType][]discoveryv1.Endpoint
}

// planImport plans one service's import from its input.
func planImport(in importInput) *importPlan {
	p := &importPlan{in: in}
	var live []*brokerv1.ExportedService
	for _, e := range in.Exports {
		if in.Capped[e.Spec.SourceCluster] {
			p.Capped = append(p.Capped, e.Spec.SourceCluster)
			continue
		}
		st := in.Clusters[e.Spec.SourceCluster]
		if st.Health == brokerv1.Withdrawn {
			continue
		}
		// No export may claim to predate its cluster's joining: the
		// oldest export wins every conflict.
		if t := brokerv1.EffectiveExportTime(e.Spec.ExportCreationTimestamp, st.Joined); !t.Equal(&e.Spec.ExportCreationTimestamp) {
			e = e.DeepCopy()
			e.Spec.ExportCreationTimestamp = t
		}
		live = append(live, e)
	}
	slices.Sort(p.Capped)
	p.Capped = slices.Compact(p.Capped)
	if len(live) == 0 {
		p.Remove = true
		return p
	}
	r := merge.Merge(live)
	p.Merged = r
	if in.Gateway != nil {
		p.Egress = in.Gateway.egress(in.Namespace+"/"+in.Name, r)
		p.gateway = in.Gateway.endpoints()
	}
	p.byCluster = map[string][]*discoveryv1.EndpointSlice{}
	for _, c := range r.Clusters {
		eps := in.Endpoints[c]
		if st := in.Clusters[c]; c != in.Local && (st.Claimed || !in.TrustUnclaimed) {
			var refused []string
			if eps, refused = takeEndpoints(c, eps, st.PodCIDRs); len(refused) > 0 {
				if p.Refused == nil {
					p.Refused = map[string][]string{}
				}
				p.Refused[c] = refused
			}
		}
		p.byCluster[c] = byFamily(eps)
	}
	if r.Type == brokerv1.ClusterSetIP {
		if p.FamilyNotSupported = familyNotSupported(r.IPFamilies, in.Families); p.FamilyNotSupported == "" {
			p.Derived = derivedService(in.Namespace, in.Name, r)
		}
	}
	p.setDerived(in.Derived)
	return p
}

// familyNotSupported says why an export of the families cannot get a
// ClusterSetIP in a cluster of the local ones (an IPv6-only Service
// imported into an IPv4-only cluster, say), or "" when it can: when they
// share a family, or either is unknown. Asked for anyway, the derived
// Service would be refused by the apiserver on every sync, and the import
// would say nothing of why.
func familyNotSupported(export, local []corev1.IPFamily) string {
	if len(export) == 0 || len(local) == 0 || slices.ContainsFunc(export, func(f corev1.IPFamily) bool { return slices.Contains(local, f) }) {
		return ""
	}
	return fmt.Sprintf("The exported Service's IP families %v are not this cluster's %v (its service CIDRs): no ClusterSetIP here could reach its endpoints.", export, local)
}

// setDerived (re)computes what follows from the derived Service as it
// stands: the ServiceImport's ClusterSetIPs and the derived Service's
// slices. Apply calls it again once it has written the derived Service,
// whose addresses the apiserver allocates.
func (p *importPlan) setDerived(derived *corev1.Service) {
	in, r := p.in, p.Merged
	p.in.Derived = derived
	if r.Type != brokerv1.ClusterSetIP || p.FamilyNotSupported != "" {
		derived = nil
	}
	p.Import = serviceImport(in.Namespace, in.Name, r, derived, p.Egress)
	p.Slices = map[string]*discoveryv1.EndpointSlice{}
	for _, c := range r.Clusters {
		for _, s := range p.byCluster[c] {
			s := importSlice(s, in.Namespace, in.Name, c, "")
			p.Slices[s.Name] = s
		}
	}
	if r.Type != brokerv1.ClusterSetIP || p.FamilyNotSupported != "" {
		return
	}
	// Gateway mode points the derived Service at the gateway; when the
	// gateway cannot carry the import, direct mode's choice stands in.
	gateway := gatewaySlices(in.Namespace, in.Name, derived, r, p.Egress, p.gateway)
	for _, s := range gateway {
		p.Slices[s.Name] = s
	}
	if len(gateway) > 0 {
		return
	}
	derivedName := derivedServiceName(in.Name)
	routed := routePorts(p.byCluster, in.Exports, r.Ports, func(serving map[string][]*discoveryv1.EndpointSlice) []string {
		return chooseClusters(serving, localityOf(in.Exports, r.Winner), in.Local, in.Region, in.Clusters)
	})
	for _, c := range sortedKeys(routed) {
		for _, s := range p.byCluster[c] {
			s := importSlice(s, in.Namespace, in.Name, c, derivedName)
			s.Ports = keepPorts(s.Ports, routed[c])
			p.Slices[s.Name] = s
		}
	}
}

// serviceImport is the ServiceImport of a merged export. derived, when it
// has addresses, gives its ClusterSetIPs.
func serviceImport(ns, name string, r merge.Result, derived *corev1.Service, egress *egressAssignment) *mcsv1beta1.ServiceImport {
	annotations := clone(r.Annotations)
	// The egress annotation is the agent's word to the xDS server: an
	// exported annotation of that name must not pass for it.
	delete(annotations, brokerv1.AnnotationEgressPorts)
	if egress != nil && len(egress.Ports) > 0 {
		annotations[brokerv1.AnnotationEgressPorts] = brokerv1.FormatEgressPorts(egress.Ports)
	}
	si := &mcsv1beta1.ServiceImport{
		TypeMeta: metav1.TypeMeta{APIVersion: mcsv1beta1.SchemeGroupVersion.String(), Kind: "ServiceImport"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns,
			Labels:      withLabel(r.Labels, discoveryv1.LabelManagedBy, brokerv1.ManagedBy),
			Annotations: annotations},
		Spec: mcsv1beta1.ServiceImportSpec{
			Type:                  mcsv1beta1.ServiceImportType(r.Type),
			SessionAffinity:       r.SessionAffinity,
			SessionAffinityConfig: r.SessionAffinityConfig,
			IPFamilies:            r.IPFamilies,
			InternalTrafficPolicy: r.InternalTrafficPolicy,
			TrafficDistribution:   r.TrafficDistribution,
		},
	}
	for _, p := range r.Ports {
		si.Spec.Ports = append(si.Spec.Ports, mcsv1beta1.ServicePort{Name: p.Name, Protocol: p.Protocol, AppProtocol: p.AppProtocol, Port: p.Port})
	}
	if derived != nil && len(derived.Spec.ClusterIPs) > 0 {
		si.Spec.IPs = derived.Spec.ClusterIPs
		si.Spec.IPFamilies = derived.Spec.IPFamilies
	}
	return si
}

// derivedService is the Service that holds an import's ClusterSetIP:
// selector-less, so its endpoints are the slices this agent writes, and
// allocated from this cluster's own service range by the apiserver.
func derivedService(ns, name string, r merge.Result) *corev1.Service {
	svc := &corev1.Service{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{Name: derivedServiceName(name), Namespace: ns,
			Labels:      map[string]string{labelDerivedFor: name, discoveryv1.LabelManagedBy: brokerv1.ManagedBy},
			Annotations: map[string]string{}},
		Spec: corev1.ServiceSpec{
			Type:                  corev1.ServiceTypeClusterIP,
			SessionAffinity:       r.SessionAffinity,
			SessionAffinityConfig: r.SessionAffinityConfig,
			InternalTrafficPolicy: r.InternalTrafficPolicy,
			TrafficDistribution:   r.TrafficDistribution,
		},
	}
	switch {
	case len(r.IPFamilies) > 1:
		// A dual-stack export takes whichever families this cluster has,
		// in its order: naming them would make a single-stack cluster's
		// apiserver refuse the Service ("family IPv6 is not configured"),
		// and a clusterset may mix single- and dual-stack members.
		policy := corev1.IPFamilyPolicyPreferDualStack
		svc.Spec.IPFamilyPolicy = &policy
	case len(r.IPFamilies) == 1:
		// One family is what the endpoints have: a ClusterSetIP of
		// another family could not reach them, so it is asked for as is.
		svc.Spec.IPFamilies = r.IPFamilies
		policy := corev1.IPFamilyPolicySingleStack
		svc.Spec.IPFamilyPolicy = &policy
	}
	for _, p := range r.Ports {
		svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{
			Name: p.Name, Protocol: p.Protocol, AppProtocol: p.AppProtocol, Port: p.Port, TargetPort: intstr.FromInt32(p.Port),
		})
	}
	return svc
}

// localityOf is the winning export's locality policy.
func localityOf(exports []*brokerv1.ExportedService, winner string) string {
	for _, e := range exports {
		if e.Spec.SourceCluster == winner {
			switch p := e.Annotations[brokerv1.AnnotationLocality]; p {
			case LocalitySpread, LocalityRemoteFirst:
				return p
			}
		}
	}
	return LocalityLocal
}

// chooseClusters picks whose endpoints the derived Service gets, by the
// locality policy: local keeps traffic here while any local endpoint is
// ready and otherwise goes to the nearest region with ready endpoints;
// spread uses every cluster; remote-first prefers the nearest other
// clusters and falls back to this one. Other clusters that are
// unreachable now get no traffic while a reachable one has ready
// endpoints; they stay in the import until withdrawn.
func chooseClusters(byCluster map[string][]*discoveryv1.EndpointSlice, policy, local, region string, states map[string]clusterState) []string {
	var all, remote []string
	for c := range byCluster {
		all = append(all, c)
		if c != local && anyReady(byCluster[c]) {
			remote = append(remote, c)
		}
	}
	slices.Sort(all)
	slices.Sort(remote)
	isDown := func(c string) bool { return c != local && states[c].Unreachable }
	if up := slices.DeleteFunc(slices.Clone(remote), isDown); len(up) > 0 {
		remote = up
	}
	localReady := anyReady(byCluster[local])
	nearest := nearest(remote, region, states)
	switch {
	case policy == LocalitySpread:
		if up := slices.DeleteFunc(slices.Clone(all), isDown); slices.ContainsFunc(up, func(c string) bool { return anyReady(byCluster[c]) }) {
			return up
		}
		return all
	case policy == LocalityRemoteFirst && len(nearest) > 0:
		return nearest
	case policy == LocalityRemoteFirst:
		return []string{local}
	case localReady:
		return []string{local}
	case len(nearest) > 0:
		return nearest
	default:
		// Nothing is ready anywhere: keep every endpoint listed, so that
		// readiness flips are all that is needed to recover.
		return all
	}
}

// nearest keeps the clusters in region when there are any.
func nearest(clusters []string, region string, states map[string]clusterState) []string {
	if region == "" {
		return clusters
	}
	var same []string
	for _, c := range clusters {
		if states[c].Region == region {
			same = append(same, c)
		}
	}
	if len(same) > 0 {
		return same
	}
	return clusters
}

// gatewaySlices are the derived Service's EndpointSlices in gateway mode:
// the ready gateway pods of each of the Service's families, with each
// service port numbered as its egress port, so that kube-proxy sends
// ClusterSetIP:port to gateway:egress. Nil means the gateway cannot carry
// this import now (a port lacks an egress port, or no gateway pod of the
// Service's families is ready) and the plan falls back to direct mode.
func gatewaySlices(ns, name string, derived *corev1.Service, r merge.Result, as *egressAssignment,
	endpoints map[discoveryv1.AddressType][]discoveryv1.Endpoint) []*discoveryv1.EndpointSlice {
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
				}},
			AddressType: at,
			Endpoints:   endpoints[at],
			Ports:       ports,
		})
	}
	return out
}

// serviceFamilies are the IP families of the service CIDRs, in their
// order; a range that does not parse adds none (the Cluster record, which
// publishes them, is refused by the broker then).
func serviceFamilies(cidrs []string) []corev1.IPFamily {
	var out []corev1.IPFamily
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(strings.TrimSpace(c))
		if err != nil {
			continue
		}
		f := corev1.IPv4Protocol
		if p.Addr().Is6() && !p.Addr().Is4In6() {
			f = corev1.IPv6Protocol
		}
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	return out
}
