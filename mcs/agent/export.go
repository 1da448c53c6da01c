package agent

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/merge"
)

// syncExport publishes one local ServiceExport to the broker, or withdraws
// it, and sets its conditions.
func (a *Agent) syncExport(ctx context.Context, key string) error {
	ns, name, err := cutKey(key)
	if err != nil {
		return nil // a malformed key cannot become valid by retrying
	}
	se, err := a.serviceExports.ServiceExports(ns).Get(name)
	if apierrors.IsNotFound(err) {
		return a.withdraw(ctx, ns, name)
	}
	if err != nil {
		return err
	}
	svc, err := a.services.Services(ns).Get(name)
	switch {
	case apierrors.IsNotFound(err):
		// Reported, not retried: the Service's creation brings us back.
		if err := a.withdraw(ctx, ns, name); err != nil {
			return err
		}
		return a.setExportConditions(ctx, se,
			mcsv1beta1.NewServiceExportCondition(mcsv1beta1.ServiceExportConditionValid, metav1.ConditionFalse, mcsv1beta1.ServiceExportReasonNoService,
				fmt.Sprintf("Service %s/%s does not exist: create it to export it, or delete this ServiceExport.", ns, name)),
			mcsv1beta1.NewServiceExportCondition(mcsv1beta1.ServiceExportConditionReady, metav1.ConditionFalse, mcsv1beta1.ServiceExportReasonPending,
				"Waiting for the Service to exist."))
	case err != nil:
		return err
	case svc.Spec.Type == corev1.ServiceTypeExternalName:
		if err := a.withdraw(ctx, ns, name); err != nil {
			return err
		}
		return a.setExportConditions(ctx, se,
			mcsv1beta1.NewServiceExportCondition(mcsv1beta1.ServiceExportConditionValid, metav1.ConditionFalse, mcsv1beta1.ServiceExportReasonInvalidServiceType,
				fmt.Sprintf("Service %s/%s is of type ExternalName, which cannot be exported: export a ClusterIP or headless Service instead.", ns, name)),
			mcsv1beta1.NewServiceExportCondition(mcsv1beta1.ServiceExportConditionReady, metav1.ConditionFalse, mcsv1beta1.ServiceExportReasonFailed,
				"The Service cannot be exported."))
	}

	record := a.exportRecord(se, svc)
	if err := a.publishRecord(ctx, record); err != nil {
		return a.failExport(ctx, se, fmt.Errorf("publishing the export record: %w", err))
	}
	if err := a.publishSlices(ctx, ns, name); err != nil {
		return a.failExport(ctx, se, fmt.Errorf("publishing EndpointSlices: %w", err))
	}

	// The Conflict condition comes from every cluster's records, with ours
	// as just published (the informer may not have seen it yet).
	exports := []*brokerv1.ExportedService{record}
	for _, e := range a.exportsOf(ns, name) {
		if e.Spec.SourceCluster != a.cfg.ClusterID {
			exports = append(exports, e)
		}
	}
	merged := merge.Merge(exports)
	return a.setExportConditions(ctx, se,
		mcsv1beta1.NewServiceExportCondition(mcsv1beta1.ServiceExportConditionValid, metav1.ConditionTrue, mcsv1beta1.ServiceExportReasonValid,
			"The Service can be exported."),
		mcsv1beta1.NewServiceExportCondition(mcsv1beta1.ServiceExportConditionReady, metav1.ConditionTrue, mcsv1beta1.ServiceExportReasonExported,
			fmt.Sprintf("Exported to the broker; exported by %d cluster(s): %s.", len(merged.Clusters), strings.Join(merged.Clusters, ", "))),
		merged.Condition(se.Generation))
}

// exportRecord is this cluster's broker record for a Service and its
// ServiceExport.
func (a *Agent) exportRecord(se *mcsv1beta1.ServiceExport, svc *corev1.Service) *brokerv1.ExportedService {
	typ := brokerv1.ClusterSetIP
	if svc.Spec.ClusterIP == corev1.ClusterIPNone {
		typ = brokerv1.Headless
	}
	var ports []brokerv1.ServicePort
	for _, p := range svc.Spec.Ports {
		ports = append(ports, brokerv1.ServicePort{Name: p.Name, Protocol: p.Protocol, AppProtocol: p.AppProtocol, Port: p.Port})
	}
	annotations := map[string]string{}
	if loc := se.Annotations[brokerv1.AnnotationLocality]; loc != "" {
		annotations[brokerv1.AnnotationLocality] = loc
	}
	rec := &brokerv1.ExportedService{
		TypeMeta: metav1.TypeMeta{APIVersion: brokerv1.SchemeGroupVersion.String(), Kind: "ExportedService"},
		ObjectMeta: metav1.ObjectMeta{
			Name:        brokerv1.ExportedServiceName(a.cfg.ClusterID, se.Namespace, se.Name),
			Namespace:   a.cfg.BrokerNamespace,
			Labels:      a.recordLabels(se.Namespace, se.Name),
			Annotations: annotations,
		},
		Spec: brokerv1.ExportedServiceSpec{
			SourceCluster:           a.cfg.ClusterID,
			ServiceNamespace:        se.Namespace,
			ServiceName:             se.Name,
			Type:                    typ,
			Ports:                   ports,
			SessionAffinity:         svc.Spec.SessionAffinity,
			IPFamilies:              svc.Spec.IPFamilies,
			InternalTrafficPolicy:   svc.Spec.InternalTrafficPolicy,
			TrafficDistribution:     svc.Spec.TrafficDistribution,
			ExportedLabels:          se.Spec.ExportedLabels,
			ExportedAnnotations:     se.Spec.ExportedAnnotations,
			ExportCreationTimestamp: se.CreationTimestamp,
		},
	}
	if typ == brokerv1.ClusterSetIP {
		rec.Spec.SessionAffinityConfig = svc.Spec.SessionAffinityConfig
	}
	return rec
}

func (a *Agent) recordLabels(ns, name string) map[string]string {
	return map[string]string{
		brokerv1.LabelSourceCluster:    a.cfg.ClusterID,
		brokerv1.LabelServiceName:      name,
		brokerv1.LabelServiceNamespace: ns,
	}
}

// publishRecord applies the export record unless the broker already holds
// exactly it.
func (a *Agent) publishRecord(ctx context.Context, rec *brokerv1.ExportedService) error {
	hash := contentHash([]any{rec.Labels, rec.Annotations, rec.Spec})
	cur, ok := a.brokerExport(rec.Name)
	_, err := writeWhole(ctx, a, a.cfg.BrokerClient.BrokerV1alpha1().ExportedServices(rec.Namespace), rec, cur, ok,
		hash, "broker", recordWriteKey(rec.Name))
	return err
}

// publishSlices mirrors the local EndpointSlices of a service to the
// broker and removes broker copies whose local slice is gone.
func (a *Agent) publishSlices(ctx context.Context, ns, name string) error {
	want := map[string]*discoveryv1.EndpointSlice{}
	for _, local := range a.localSlicesOf(ns, name) {
		s := a.brokerSlice(local)
		want[s.Name] = s
	}
	api := a.cfg.Broker.DiscoveryV1().EndpointSlices(a.cfg.BrokerNamespace)
	if err := inParallel(slices.Collect(maps.Values(want)), func(s *discoveryv1.EndpointSlice) error {
		return a.applySlice(ctx, "broker", api, s)
	}); err != nil {
		return err
	}
	var stale []*discoveryv1.EndpointSlice
	for _, cur := range a.brokerSlicesOf(ns, name) {
		if cur.Labels[brokerv1.LabelSourceCluster] == a.cfg.ClusterID && want[cur.Name] == nil {
			stale = append(stale, cur)
		}
	}
	return inParallel(stale, func(cur *discoveryv1.EndpointSlice) error {
		if err := api.Delete(ctx, cur.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			a.countWrite("broker", "delete", err)
			return err
		}
		a.countWrite("broker", "delete", nil)
		return nil
	})
}

// brokerSlice is the broker's copy of a local EndpointSlice: the same
// endpoints and ports, labelled with the source cluster and the service,
// without what only makes sense inside this cluster (owner, node, pod
// references).
func (a *Agent) brokerSlice(local *discoveryv1.EndpointSlice) *discoveryv1.EndpointSlice {
	svc := local.Labels[discoveryv1.LabelServiceName]
	labels := a.recordLabels(local.Namespace, svc)
	labels[discoveryv1.LabelManagedBy] = brokerv1.ManagedBy
	s := &discoveryv1.EndpointSlice{
		TypeMeta:    metav1.TypeMeta{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice"},
		ObjectMeta:  metav1.ObjectMeta{Name: brokerSliceName(a.cfg.ClusterID, local.Namespace, local.Name), Namespace: a.cfg.BrokerNamespace, Labels: labels},
		AddressType: local.AddressType,
		Ports:       local.Ports,
	}
	for _, e := range local.Endpoints {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{
			Addresses: e.Addresses, Conditions: e.Conditions, Hostname: e.Hostname, Zone: e.Zone,
		})
	}
	return s
}

// withdraw removes this cluster's records of a service from the broker.
func (a *Agent) withdraw(ctx context.Context, ns, name string) error {
	recName := brokerv1.ExportedServiceName(a.cfg.ClusterID, ns, name)
	if _, ok := a.brokerExport(recName); ok {
		err := a.cfg.BrokerClient.BrokerV1alpha1().ExportedServices(a.cfg.BrokerNamespace).Delete(ctx, recName, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			a.countWrite("broker", "delete", err)
			return fmt.Errorf("withdrawing %s: %w", recName, err)
		}
		a.countWrite("broker", "delete", nil)
	}
	api := a.cfg.Broker.DiscoveryV1().EndpointSlices(a.cfg.BrokerNamespace)
	for _, s := range a.brokerSlicesOf(ns, name) {
		if s.Labels[brokerv1.LabelSourceCluster] != a.cfg.ClusterID {
			continue
		}
		if err := api.Delete(ctx, s.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			a.countWrite("broker", "delete", err)
			return fmt.Errorf("withdrawing EndpointSlice %s: %w", s.Name, err)
		}
		a.countWrite("broker", "delete", nil)
	}
	a.updateExportGauges()
	return nil
}

// failExport reports a failed publication on the ServiceExport and returns
// the error so the key is retried with backoff.
func (a *Agent) failExport(ctx context.Context, se *mcsv1beta1.ServiceExport, cause error) error {
	_ = a.setExportConditions(ctx, se, mcsv1beta1.NewServiceExportCondition(mcsv1beta1.ServiceExportConditionReady, metav1.ConditionFalse,
		mcsv1beta1.ServiceExportReasonPending, fmt.Sprintf("Not yet published to the broker, retrying: %v", cause)))
	return cause
}

// setExportConditions writes conditions to the ServiceExport's status when
// they change, and records an Event for each change a person should see.
func (a *Agent) setExportConditions(ctx context.Context, se *mcsv1beta1.ServiceExport, conds ...metav1.Condition) error {
	updated := se.DeepCopy()
	changed := false
	for _, c := range conds {
		c.ObservedGeneration = se.Generation
		old := meta.FindStatusCondition(updated.Status.Conditions, c.Type)
		if old != nil && old.Status == c.Status && old.Reason == c.Reason && old.Message == c.Message && old.ObservedGeneration == c.ObservedGeneration {
			continue
		}
		if c.Status == metav1.ConditionFalse && c.Type != string(mcsv1beta1.ServiceExportConditionConflict) ||
			c.Status == metav1.ConditionTrue && c.Type == string(mcsv1beta1.ServiceExportConditionConflict) {
			a.events.Event(se, corev1.EventTypeWarning, c.Reason, c.Message)
		}
		meta.SetStatusCondition(&updated.Status.Conditions, c)
		changed = true
	}
	if !changed {
		return nil
	}
	_, err := a.cfg.LocalMCS.MulticlusterV1beta1().ServiceExports(se.Namespace).UpdateStatus(ctx, updated, metav1.UpdateOptions{FieldManager: fieldManager})
	a.countWrite("local", "status", err)
	if err == nil {
		a.updateExportGauges()
	}
	if apierrors.IsConflict(err) {
		return fmt.Errorf("ServiceExport %s/%s changed while its status was written: %w", se.Namespace, se.Name, err)
	}
	return err
}

// updateExportGauges recounts exports and conflicts from the caches.
func (a *Agent) updateExportGauges() {
	all, _ := a.serviceExports.List(everything)
	exported, conflicts := 0, 0
	for _, se := range all {
		if meta.IsStatusConditionTrue(se.Status.Conditions, string(mcsv1beta1.ServiceExportConditionReady)) {
			exported++
		}
		if meta.IsStatusConditionTrue(se.Status.Conditions, string(mcsv1beta1.ServiceExportConditionConflict)) {
			conflicts++
		}
	}
	a.metrics.exports.Set(float64(exported))
	a.metrics.conflicts.Set(float64(conflicts))
}
