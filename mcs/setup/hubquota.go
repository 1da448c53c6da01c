package setup

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// HubQuotaName names the identity of the hub's record counter (`isthmus
// hub-quota`, package mcs/hubquota): its ServiceAccount in the broker
// namespace, its Role and RoleBinding there.
const HubQuotaName = "isthmus-hub-quota"

// hubQuotaObjects are the record counter's identity and what it may do,
// nothing more: list and watch the members' exports and EndpointSlices
// (their metadata is all it reads) and the MemberPolicies, and write
// only the MemberPolicies' status. It can change no record, no policy's
// spec, and no member's credential. The isthmus-broker chart runs it
// with this identity; `broker install` makes the identity only.
func hubQuotaObjects(ns string) (*corev1.ServiceAccount, *rbacv1.Role, *rbacv1.RoleBinding) {
	labels := map[string]string{"app.kubernetes.io/part-of": "isthmus", "app.kubernetes.io/component": "hub-quota"}
	sa := &corev1.ServiceAccount{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
		ObjectMeta: metav1.ObjectMeta{Name: HubQuotaName, Namespace: ns, Labels: labels},
	}
	role := &rbacv1.Role{
		TypeMeta:   metav1.TypeMeta{APIVersion: rbacv1.SchemeGroupVersion.String(), Kind: "Role"},
		ObjectMeta: metav1.ObjectMeta{Name: HubQuotaName, Namespace: ns, Labels: labels},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{brokerv1.GroupName}, Resources: []string{"exportedservices"}, Verbs: []string{"list", "watch"}},
			{APIGroups: []string{discoveryv1.GroupName}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
			{APIGroups: []string{brokerv1.GroupName}, Resources: []string{"memberpolicies"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{brokerv1.GroupName}, Resources: []string{"memberpolicies/status"}, Verbs: []string{"get", "update"}},
		},
	}
	binding := &rbacv1.RoleBinding{
		TypeMeta:   metav1.TypeMeta{APIVersion: rbacv1.SchemeGroupVersion.String(), Kind: "RoleBinding"},
		ObjectMeta: metav1.ObjectMeta{Name: HubQuotaName, Namespace: ns, Labels: labels},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: HubQuotaName},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: HubQuotaName, Namespace: ns}},
	}
	return sa, role, binding
}

// recordCountsStale is how old the freshest count may be before join and
// broker install say no record counter runs: three of the counter's
// default resyncs, each of which refreshes every MemberPolicy's count.
const recordCountsStale = 15 * time.Minute

// recordCounterNote says, when no MemberPolicy in ns but skip holds counts
// written in the last recordCountsStale, that the record-count limits are
// not enforced and what to run; "" when one does, or when there is no
// other MemberPolicy to tell by. The record-count rules fail open (a
// MemberPolicy never counted holds no count), so this is where a hub admin
// learns that the counter is missing.
func recordCounterNote(ctx context.Context, hub *Clients, ns, skip string) string {
	list, err := hub.Dynamic.Resource(memberPolicyGVR).Namespace(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return ""
	}
	others := 0
	for _, u := range list.Items {
		if u.GetName() == skip {
			continue
		}
		others++
		var mp brokerv1.MemberPolicy
		if runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &mp) == nil &&
			mp.Status.ObservedTime != nil && time.Since(mp.Status.ObservedTime.Time) < recordCountsStale {
			return ""
		}
	}
	if others == 0 && skip != "" {
		return ""
	}
	return fmt.Sprintf("no record counter has counted the members' records in namespace %s in the last %v: the limits spec.limits.maxExports and maxEndpointSlices are not enforced until `isthmus hub-quota` runs on the hub as ServiceAccount %s/%s (the isthmus-broker chart runs it; see docs/operations.md)",
		ns, recordCountsStale, ns, HubQuotaName)
}
