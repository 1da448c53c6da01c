package agent

import (
	"context"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/merge"
)

// massWithdrawalFloor is the number of imports below which an empty broker
// view is believed at once. Above it, an empty view is only believed after
// WithdrawAfter: a broker restored empty or a wrong credential must not
// wipe a cluster's imports in one sweep.
const massWithdrawalFloor = 3

// syncImport brings one service's import in this cluster in line with
// every live cluster's export records: the ServiceImport, its derived
// Service and their EndpointSlices.
func (a *Agent) syncImport(ctx context.Context, key string) error {
	ns, name, err := cutKey(key)
	if err != nil {
		return nil
	}
	if _, err := a.namespaces.Get(ns); apierrors.IsNotFound(err) {
		a.releaseEgress(key) // its ServiceImport went with the namespace
		return nil           // imported only where the namespace exists
	}
	exports := a.liveExports(ns, name)
	if len(exports) == 0 {
		return a.removeImport(ctx, ns, name)
	}
	r := merge.Merge(exports)
	derivedName := derivedServiceName(name)
	egress := a.assignEgress(key, r)

	var derived *corev1.Service
	if r.Type == brokerv1.ClusterSetIP {
		derived = a.cachedDerived(ns, derivedName)
	}
	si, err := a.applyImport(ctx, ns, name, r, derived, egress)
	if err != nil {
		return err
	}
	a.egressWritten(key)
	if egress != nil && egress.NewlyExhausted {
		a.events.Event(si, corev1.EventTypeWarning, ReasonEgressExhausted, a.exhaustedMessage(egress))
		a.log.Warn("gateway egress ports exhausted; the import bypasses the gateway", "import", key, "range",
			fmt.Sprintf("%d-%d", a.cfg.EgressPortMin, a.cfg.EgressPortMax))
	}
	owner := metav1.OwnerReference{APIVersion: mcsv1beta1.SchemeGroupVersion.String(), Kind: "ServiceImport", Name: si.Name, UID: si.UID}
	if r.Type == brokerv1.ClusterSetIP {
		if derived, err = a.applyDerived(ctx, ns, name, r, owner); err != nil {
			return err
		}
		if !slices.Equal(si.Spec.IPs, derived.Spec.ClusterIPs) {
			if si, err = a.applyImport(ctx, ns, name, r, derived, egress); err != nil {
				return err
			}
		}
	} else if err := a.deleteDerived(ctx, ns, derivedName); err != nil {
		return err
	}
	if err := a.setImportStatus(ctx, si, r, egress); err != nil {
		return err
	}

	byCluster := a.endpointsByCluster(ns, name, r.Clusters)
	want := map[string]*discoveryv1.EndpointSlice{}
	for _, c := range r.Clusters {
		for _, s := range byCluster[c] {
			s := importSlice(s, ns, name, c, "", owner)
			want[s.Name] = s
		}
	}
	if r.Type == brokerv1.ClusterSetIP {
		// Gateway mode points the derived Service at the gateway; when the
		// gateway cannot carry the import, direct mode's choice stands in.
		gateway := a.gatewaySlices(ns, name, derived, r, egress, owner)
		for _, s := range gateway {
			want[s.Name] = s
		}
		if len(gateway) == 0 {
			for _, c := range a.chooseClusters(byCluster, localityOf(exports, r.Winner)) {
				for _, s := range byCluster[c] {
					s := importSlice(s, ns, name, c, derivedName, owner)
					want[s.Name] = s
				}
			}
		}
	}
	api := a.cfg.Local.DiscoveryV1().EndpointSlices(ns)
	for _, s := range want {
		if err := a.applySlice(ctx, "local", api, s); err != nil {
			return fmt.Errorf("writing EndpointSlice %s/%s: %w", ns, s.Name, err)
		}
	}
	for _, cur := range slicesIn(a.ownSlices, ns+"/"+name) {
		if want[cur.Name] == nil {
			if err := api.Delete(ctx, cur.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				return fmt.Errorf("deleting stale EndpointSlice %s/%s: %w", ns, cur.Name, err)
			}
			a.countWrite("local", "delete", nil)
		}
	}
	a.updateImportGauge()
	return nil
}

// liveExports are the export records of a service from clusters not
// withdrawn for a lapsed heartbeat.
func (a *Agent) liveExports(ns, name string) []*brokerv1.ExportedService {
	var out []*brokerv1.ExportedService
	for _, e := range a.exportsOf(ns, name) {
		if a.healthOf(e.Spec.SourceCluster) != brokerv1.Withdrawn {
			out = append(out, e)
		}
	}
	return out
}

func (a *Agent) applyImport(ctx context.Context, ns, name string, r merge.Result, derived *corev1.Service, egress *egressAssignment) (*mcsv1beta1.ServiceImport, error) {
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
	hash := contentHash([]any{si.Labels, si.Annotations, si.Spec})
	if cur, err := a.serviceImports.ServiceImports(ns).Get(name); err == nil && cur.Annotations[annotationHash] == hash {
		return cur, nil
	}
	si.Annotations[annotationHash] = hash
	data, err := applyJSON(si)
	if err != nil {
		return nil, err
	}
	out, err := a.cfg.LocalMCS.MulticlusterV1beta1().ServiceImports(ns).Patch(ctx, name, types.ApplyPatchType, data, patchOptions)
	a.countWrite("local", "apply", err)
	if err != nil {
		return nil, fmt.Errorf("writing ServiceImport %s/%s: %w", ns, name, err)
	}
	return out, nil
}

// applyDerived writes the Service that holds the import's ClusterSetIP:
// selector-less, so its endpoints are the slices this agent writes, and
// allocated from this cluster's own service range by the apiserver.
func (a *Agent) applyDerived(ctx context.Context, ns, name string, r merge.Result, owner metav1.OwnerReference) (*corev1.Service, error) {
	svc := &corev1.Service{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{Name: derivedServiceName(name), Namespace: ns,
			Labels:          map[string]string{labelDerivedFor: name, discoveryv1.LabelManagedBy: brokerv1.ManagedBy},
			Annotations:     map[string]string{},
			OwnerReferences: []metav1.OwnerReference{owner}},
		Spec: corev1.ServiceSpec{
			Type:                  corev1.ServiceTypeClusterIP,
			SessionAffinity:       r.SessionAffinity,
			SessionAffinityConfig: r.SessionAffinityConfig,
			InternalTrafficPolicy: r.InternalTrafficPolicy,
			TrafficDistribution:   r.TrafficDistribution,
		},
	}
	if len(r.IPFamilies) > 0 {
		svc.Spec.IPFamilies = r.IPFamilies
		policy := corev1.IPFamilyPolicySingleStack
		if len(r.IPFamilies) > 1 {
			policy = corev1.IPFamilyPolicyPreferDualStack
		}
		svc.Spec.IPFamilyPolicy = &policy
	}
	for _, p := range r.Ports {
		svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{
			Name: p.Name, Protocol: p.Protocol, AppProtocol: p.AppProtocol, Port: p.Port, TargetPort: intstr.FromInt32(p.Port),
		})
	}
	hash := contentHash([]any{svc.Labels, svc.OwnerReferences, svc.Spec})
	if cur := a.cachedDerived(ns, svc.Name); cur != nil && cur.Annotations[annotationHash] == hash {
		return cur, nil
	}
	svc.Annotations[annotationHash] = hash
	data, err := applyJSON(svc)
	if err != nil {
		return nil, err
	}
	out, err := a.cfg.Local.CoreV1().Services(ns).Patch(ctx, svc.Name, types.ApplyPatchType, data, patchOptions)
	a.countWrite("local", "apply", err)
	if err != nil {
		return nil, fmt.Errorf("writing derived Service %s/%s: %w", ns, svc.Name, err)
	}
	return out, nil
}

func (a *Agent) cachedDerived(ns, name string) *corev1.Service {
	o, ok, _ := a.derived.GetByKey(ns + "/" + name)
	if !ok {
		return nil
	}
	return o.(*corev1.Service)
}

func (a *Agent) deleteDerived(ctx context.Context, ns, name string) error {
	if a.cachedDerived(ns, name) == nil {
		return nil
	}
	err := a.cfg.Local.CoreV1().Services(ns).Delete(ctx, name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting derived Service %s/%s: %w", ns, name, err)
	}
	a.countWrite("local", "delete", nil)
	return nil
}

// setImportStatus lists the exporting clusters, the Ready condition and,
// in gateway mode, the GatewayEgress condition.
func (a *Agent) setImportStatus(ctx context.Context, si *mcsv1beta1.ServiceImport, r merge.Result, egress *egressAssignment) error {
	updated := si.DeepCopy()
	updated.Status.Clusters = nil
	for _, c := range r.Clusters {
		updated.Status.Clusters = append(updated.Status.Clusters, mcsv1beta1.ClusterStatus{Cluster: c})
	}
	ready := metav1.Condition{Type: string(mcsv1beta1.ServiceImportConditionReady), Status: metav1.ConditionTrue,
		Reason: string(mcsv1beta1.ServiceImportReasonReady), Message: fmt.Sprintf("Imported from %d cluster(s).", len(r.Clusters)),
		ObservedGeneration: si.Generation}
	if r.Type == brokerv1.ClusterSetIP && len(si.Spec.IPs) == 0 {
		ready.Status, ready.Reason, ready.Message = metav1.ConditionFalse, string(mcsv1beta1.ServiceImportReasonPending), "Waiting for the ClusterSetIP to be allocated."
	}
	meta.SetStatusCondition(&updated.Status.Conditions, ready)
	a.setEgressCondition(&updated.Status, egress, r, si.Generation)
	if equalStatus(si.Status, updated.Status) {
		return nil
	}
	_, err := a.cfg.LocalMCS.MulticlusterV1beta1().ServiceImports(si.Namespace).UpdateStatus(ctx, updated, metav1.UpdateOptions{FieldManager: fieldManager})
	a.countWrite("local", "status", err)
	if err != nil {
		return fmt.Errorf("writing ServiceImport %s/%s status: %w", si.Namespace, si.Name, err)
	}
	return nil
}

func equalStatus(x, y mcsv1beta1.ServiceImportStatus) bool {
	if !slices.Equal(x.Clusters, y.Clusters) || len(x.Conditions) != len(y.Conditions) {
		return false
	}
	for i := range x.Conditions {
		a, b := x.Conditions[i], y.Conditions[i]
		if a.Type != b.Type || a.Status != b.Status || a.Reason != b.Reason || a.Message != b.Message || a.ObservedGeneration != b.ObservedGeneration {
			return false
		}
	}
	return true
}

// removeImport deletes a service's import here, unless the broker's view
// looks like an outage rather than an unexport (the mass withdrawal
// guard).
func (a *Agent) removeImport(ctx context.Context, ns, name string) error {
	si, err := a.serviceImports.ServiceImports(ns).Get(name)
	own := slicesIn(a.ownSlices, ns+"/"+name)
	derived := a.cachedDerived(ns, derivedServiceName(name))
	if apierrors.IsNotFound(err) && len(own) == 0 && derived == nil {
		a.releaseEgress(ns + "/" + name)
		return nil
	}
	if a.brokerViewSuspect() {
		a.metrics.withdrawRefused.Inc()
		a.log.Warn("refusing to withdraw an import: the broker shows no export at all; waiting in case it is an outage",
			"import", ns+"/"+name, "believe-after", a.cfg.WithdrawAfter)
		a.imports.queue.AddAfter(ns+"/"+name, a.cfg.WithdrawAfter/4)
		return nil
	}
	if si != nil && err == nil {
		err := a.cfg.LocalMCS.MulticlusterV1beta1().ServiceImports(ns).Delete(ctx, name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("deleting ServiceImport %s/%s: %w", ns, name, err)
		}
		a.countWrite("local", "delete", nil)
	}
	// The ServiceImport and its annotation are gone: its ports are free.
	a.releaseEgress(ns + "/" + name)
	// Owner references would let the garbage collector do the rest; doing
	// it here takes seconds off and works where no collector runs.
	if err := a.deleteDerived(ctx, ns, derivedServiceName(name)); err != nil {
		return err
	}
	for _, s := range own {
		if err := a.cfg.Local.DiscoveryV1().EndpointSlices(ns).Delete(ctx, s.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("deleting EndpointSlice %s/%s: %w", ns, s.Name, err)
		}
		a.countWrite("local", "delete", nil)
	}
	a.updateImportGauge()
	return nil
}

// brokerViewSuspect reports whether the broker shows no export at all
// while this cluster holds many imports, for less time than WithdrawAfter.
func (a *Agent) brokerViewSuspect() bool {
	if len(a.brokerExports.ListKeys()) > 0 {
		a.emptySince.Store(nil)
		return false
	}
	imports, _ := a.serviceImports.List(everything)
	if len(imports) < massWithdrawalFloor {
		return false
	}
	now := time.Now()
	a.emptySince.CompareAndSwap(nil, &now)
	return time.Since(*a.emptySince.Load()) < a.cfg.WithdrawAfter
}

func (a *Agent) updateImportGauge() {
	imports, _ := a.serviceImports.List(everything)
	a.metrics.imports.Set(float64(len(imports)))
}

func withLabel(m map[string]string, k, v string) map[string]string {
	out := clone(m)
	out[k] = v
	return out
}

func clone(m map[string]string) map[string]string {
	out := make(map[string]string, len(m)+1)
	for k, v := range m {
		out[k] = v
	}
	return out
}
