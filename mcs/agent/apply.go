package agent

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// massWithdrawalFloor is the number of imports below which an empty broker
// view is believed at once. Above it, an empty view is only believed after
// WithdrawAfter: a broker restored empty or a wrong credential must not
// wipe a cluster's imports in one sweep.
const massWithdrawalFloor = 3

// applyImport writes an import's plan: the ServiceImport, its derived
// Service, the status and the EndpointSlices, each only when this cluster
// does not hold it already, and deletes the slices the plan no longer
// lists. The ServiceImport is written first, since everything else is
// owned by it; it may be written twice, because its ClusterSetIPs are
// the derived Service's, which the apiserver allocates (MCS asks for both).
func (a *Agent) applyImport(ctx context.Context, p *importPlan) error {
	ns, name := p.in.Namespace, p.in.Name
	si, err := a.writeImport(ctx, p.Import, nil)
	if err != nil {
		return err
	}
	a.egressRecorded(ns+"/"+name, si, p.Egress)
	owner := metav1.OwnerReference{APIVersion: mcsv1beta1.SchemeGroupVersion.String(), Kind: "ServiceImport", Name: si.Name, UID: si.UID}
	if p.Derived != nil {
		p.Derived.OwnerReferences = []metav1.OwnerReference{owner}
		derived, err := a.writeDerived(ctx, p.Derived)
		if err != nil {
			return err
		}
		p.setDerived(derived)
		if !slices.Equal(si.Spec.IPs, derived.Spec.ClusterIPs) {
			if si, err = a.writeImport(ctx, p.Import, si); err != nil {
				return err
			}
		}
	} else if err := a.deleteDerived(ctx, ns, derivedServiceName(name)); err != nil {
		return err
	}
	if err := a.setImportStatus(ctx, si, p); err != nil {
		return err
	}

	api := a.cfg.Local.DiscoveryV1().EndpointSlices(ns)
	if err := inParallel(slices.Collect(maps.Values(p.Slices)), func(s *discoveryv1.EndpointSlice) error {
		s.OwnerReferences = []metav1.OwnerReference{owner}
		if err := a.applySlice(ctx, "local", api, s); err != nil {
			return fmt.Errorf("writing EndpointSlice %s/%s: %w", ns, s.Name, err)
		}
		return nil
	}); err != nil {
		return err
	}
	var stale []*discoveryv1.EndpointSlice
	for _, cur := range slicesIn(a.ownSlices, ns+"/"+name) {
		if p.Slices[cur.Name] == nil {
			stale = append(stale, cur)
		}
	}
	if err := inParallel(stale, func(cur *discoveryv1.EndpointSlice) error {
		if err := a.deleteOwn(sliceWriteKey(ns, cur.Name), func() error { return api.Delete(ctx, cur.Name, metav1.DeleteOptions{}) }); err != nil {
			return fmt.Errorf("deleting stale EndpointSlice %s/%s: %w", ns, cur.Name, err)
		}
		return nil
	}); err != nil {
		return err
	}
	a.updateImportGauge()
	return nil
}

// writeImport writes a ServiceImport unless this cluster holds exactly it;
// last, when set, is what this reconcile wrote before (newer than the
// cache).
func (a *Agent) writeImport(ctx context.Context, si, last *mcsv1beta1.ServiceImport) (*mcsv1beta1.ServiceImport, error) {
	hash := contentHash([]any{si.Labels, si.Annotations, si.Spec})
	cur, err := a.serviceImports.ServiceImports(si.Namespace).Get(si.Name)
	if last != nil {
		cur, err = last, nil
	}
	out, err := writeWhole(ctx, a, a.cfg.LocalMCS.MulticlusterV1beta1().ServiceImports(si.Namespace), si, cur, err == nil,
		hash, "local", importWriteKey(si.Namespace, si.Name))
	if err != nil {
		return nil, fmt.Errorf("writing ServiceImport %s/%s: %w", si.Namespace, si.Name, err)
	}
	return out, nil
}

// writeDerived applies a derived Service unless this cluster holds exactly
// it.
func (a *Agent) writeDerived(ctx context.Context, svc *corev1.Service) (*corev1.Service, error) {
	hash := contentHash([]any{svc.Labels, svc.OwnerReferences, svc.Spec})
	if cur := a.cachedDerived(svc.Namespace, svc.Name); cur != nil && cur.Annotations[annotationHash] == hash {
		return cur, nil
	}
	svc.Annotations[annotationHash] = hash
	data, err := applyJSON(svc)
	if err != nil {
		return nil, err
	}
	var out *corev1.Service
	err = a.own.noted(derivedWriteKey(svc.Namespace, svc.Name), hash, func() (err error) {
		out, err = a.cfg.Local.CoreV1().Services(svc.Namespace).Patch(ctx, svc.Name, types.ApplyPatchType, data, patchOptions)
		a.countWrite("local", "apply", err)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("writing derived Service %s/%s: %w", svc.Namespace, svc.Name, err)
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
	if err := a.deleteOwn(derivedWriteKey(ns, name), func() error {
		return a.cfg.Local.CoreV1().Services(ns).Delete(ctx, name, metav1.DeleteOptions{})
	}); err != nil {
		return fmt.Errorf("deleting derived Service %s/%s: %w", ns, name, err)
	}
	return nil
}

// deleteOwn deletes an object this agent wrote, at key in ownWrites, so
// that the deletion's event queues nothing; one already gone is no error.
func (a *Agent) deleteOwn(key string, del func() error) error {
	if err := a.own.noted(key, deletedMark, del); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	a.countWrite("local", "delete", nil)
	return nil
}

// setImportStatus lists the exporting clusters, says that MCS
// EndpointSlices are present, and sets the Ready condition and, in gateway
// mode, the GatewayEgress condition.
func (a *Agent) setImportStatus(ctx context.Context, si *mcsv1beta1.ServiceImport, p *importPlan) error {
	r, egress, refused := p.Merged, p.Egress, p.Refused
	updated := si.DeepCopy()
	// Every import gets MCS EndpointSlices (per exporting cluster and
	// family), in both data-plane modes: consumers such as Gateway API
	// implementations may read them instead of the ClusterSetIP.
	updated.Status.EndpointSliceObjects = mcsv1beta1.EndpointSliceObjectsPresent
	updated.Status.Clusters = nil
	for _, c := range r.Clusters {
		updated.Status.Clusters = append(updated.Status.Clusters, mcsv1beta1.ClusterStatus{Cluster: c})
	}
	ready := metav1.Condition{Type: string(mcsv1beta1.ServiceImportConditionReady), Status: metav1.ConditionTrue,
		Reason: string(mcsv1beta1.ServiceImportReasonReady), Message: fmt.Sprintf("Imported from %d cluster(s).", len(r.Clusters)),
		ObservedGeneration: si.Generation}
	switch {
	case p.FamilyNotSupported != "":
		ready.Status, ready.Reason, ready.Message = metav1.ConditionFalse, string(mcsv1beta1.ServiceImportReasonIPFamilyNotSupported), p.FamilyNotSupported
	case r.Type == brokerv1.ClusterSetIP && len(si.Spec.IPs) == 0:
		ready.Status, ready.Reason, ready.Message = metav1.ConditionFalse, string(mcsv1beta1.ServiceImportReasonPending), "Waiting for the ClusterSetIP to be allocated."
	}
	meta.SetStatusCondition(&updated.Status.Conditions, ready)
	a.setEgressCondition(&updated.Status, egress, r, si.Generation)
	setRefusedCondition(&updated.Status, refused, si.Generation)
	setCappedCondition(&updated.Status, p.Capped, p.in.MaxImports, si.Generation)
	if equalStatus(si.Status, updated.Status) {
		return nil
	}
	if len(refused) > 0 {
		a.log.Warn("left out part of other members' records", "import", si.Namespace+"/"+si.Name, "refused", refused)
		for c := range refused {
			a.metrics.recordsRefused.WithLabelValues(c).Inc()
		}
	}
	_, err := a.cfg.LocalMCS.MulticlusterV1beta1().ServiceImports(si.Namespace).UpdateStatus(ctx, updated, metav1.UpdateOptions{FieldManager: fieldManager})
	a.countWrite("local", "status", err)
	if err != nil {
		return fmt.Errorf("writing ServiceImport %s/%s status: %w", si.Namespace, si.Name, err)
	}
	return nil
}

func equalStatus(x, y mcsv1beta1.ServiceImportStatus) bool {
	if x.EndpointSliceObjects != y.EndpointSliceObjects || !slices.Equal(x.Clusters, y.Clusters) || len(x.Conditions) != len(y.Conditions) {
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
		if err := a.deleteOwn(importWriteKey(ns, name), func() error {
			return a.cfg.LocalMCS.MulticlusterV1beta1().ServiceImports(ns).Delete(ctx, name, metav1.DeleteOptions{})
		}); err != nil {
			return fmt.Errorf("deleting ServiceImport %s/%s: %w", ns, name, err)
		}
	}
	// The ServiceImport and its annotation are gone: its ports are free.
	a.releaseEgress(ns + "/" + name)
	// Owner references would let the garbage collector do the rest; doing
	// it here takes seconds off and works where no collector runs.
	if err := a.deleteDerived(ctx, ns, derivedServiceName(name)); err != nil {
		return err
	}
	for _, s := range own {
		if err := a.deleteOwn(sliceWriteKey(ns, s.Name), func() error {
			return a.cfg.Local.DiscoveryV1().EndpointSlices(ns).Delete(ctx, s.Name, metav1.DeleteOptions{})
		}); err != nil {
			return fmt.Errorf("deleting EndpointSlice %s/%s: %w", ns, s.Name, err)
		}
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
