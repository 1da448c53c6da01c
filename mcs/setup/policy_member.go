package setup

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

var memberPolicyGVR = brokerv1.MemberPoliciesResource

// applyMemberPolicy writes the member's MemberPolicy on the hub with the
// hub admin's credential: the ranges and namespaces approved for it. Given
// none, it keeps what an earlier join (or the hub admin) recorded, so
// joining again without the flags never widens what a member may claim.
func applyMemberPolicy(ctx context.Context, onHub *applier, ns, id string, opts JoinOptions) error {
	if (len(opts.PodCIDRs) == 0) != (len(opts.ServiceCIDRs) == 0) {
		return fmt.Errorf("--pod-cidrs and --service-cidrs go together: give both of cluster %s's ranges (the broker refuses any range outside them, and refuses every range of a kind left out)", id)
	}
	pods, err := checkApprovedCIDRs("--pod-cidrs", opts.PodCIDRs)
	if err != nil {
		return err
	}
	svcs, err := checkApprovedCIDRs("--service-cidrs", opts.ServiceCIDRs)
	if err != nil {
		return err
	}
	if err := checkRecordLimits(opts); err != nil {
		return err
	}
	for _, n := range opts.ExportNamespaces {
		if errs := validation.IsDNS1123Label(n); len(errs) > 0 {
			return fmt.Errorf("--export-namespaces: %q is not a namespace name", n)
		}
	}

	var current brokerv1.MemberPolicy
	u, err := onHub.c.Dynamic.Resource(memberPolicyGVR).Namespace(ns).Get(ctx, id, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return fmt.Errorf("reading MemberPolicy %s/%s on the broker: %w", ns, id, err)
	default:
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &current); err != nil {
			return fmt.Errorf("decoding MemberPolicy %s/%s: %w", ns, id, err)
		}
	}
	spec := brokerv1.MemberPolicySpec{CIDRs: current.Spec.CIDRs, ExportNamespaces: current.Spec.ExportNamespaces,
		Limits: memberLimits(current.Spec.Limits, opts)}
	if len(pods) > 0 {
		spec.CIDRs = &brokerv1.ApprovedCIDRs{PodCIDRs: pods, ServiceCIDRs: svcs}
		if err := checkNoOverlap(ctx, onHub, ns, id, pods, svcs); err != nil {
			return err
		}
	}
	if len(opts.ExportNamespaces) > 0 {
		spec.ExportNamespaces = slices.Compact(slices.Sorted(slices.Values(opts.ExportNamespaces)))
	}
	if _, err := onHub.apply(ctx, memberPolicyGVR, &brokerv1.MemberPolicy{
		TypeMeta: metav1.TypeMeta{APIVersion: brokerv1.SchemeGroupVersion.String(), Kind: "MemberPolicy"},
		ObjectMeta: metav1.ObjectMeta{Name: id, Namespace: ns,
			Labels: map[string]string{"app.kubernetes.io/part-of": "isthmus", brokerv1.LabelSourceCluster: id}},
		Spec: spec,
	}); err != nil {
		if apierrors.IsNotFound(err) {
			return fmt.Errorf("the broker in %s has no MemberPolicy resource: run isthmusctl broker install against the hub with this isthmusctl first (%w)", ns, err)
		}
		return err
	}
	if spec.CIDRs == nil {
		fmt.Fprintf(onHub.out, "warning: no --pod-cidrs and --service-cidrs: the broker lets cluster %s claim any range except default routes, prefixes shorter than /%d (IPv4) or /%d (IPv6) and reserved ranges, and publish endpoints anywhere in them; join again with the cluster's ranges to confine it\n",
			id, minIPv4PrefixLength, minIPv6PrefixLength)
	}
	return nil
}

// memberLimits are the limits join writes: what the MemberPolicy holds,
// with the record limits from the flags, or their defaults where it holds
// none.
func memberLimits(current *brokerv1.MemberLimits, opts JoinOptions) *brokerv1.MemberLimits {
	l := &brokerv1.MemberLimits{}
	if current != nil {
		l = current.DeepCopy()
	}
	pick := func(flag, have *int32, def int32) *int32 {
		switch {
		case flag != nil:
			return ptr(*flag)
		case have != nil:
			return have
		}
		return ptr(def)
	}
	l.MaxExports = pick(opts.MaxExports, l.MaxExports, brokerv1.DefaultMaxExports)
	l.MaxEndpointSlices = pick(opts.MaxEndpointSlices, l.MaxEndpointSlices, brokerv1.DefaultMaxEndpointSlices)
	return l
}

// checkRecordLimits refuses record limits the MemberPolicy's schema would.
func checkRecordLimits(opts JoinOptions) error {
	if v := opts.MaxExports; v != nil && (*v < 0 || *v > 100000) {
		return fmt.Errorf("--max-exports %d: must be 0-100000", *v)
	}
	if v := opts.MaxEndpointSlices; v != nil && (*v < 0 || *v > 1000000) {
		return fmt.Errorf("--max-endpoint-slices %d: must be 0-1000000", *v)
	}
	return nil
}

// checkNoOverlap refuses to approve ranges for member id that overlap
// another member's approved ranges: a range routes into one member's
// tunnel, so approving it twice would let either member take the other's
// traffic.
func checkNoOverlap(ctx context.Context, onHub *applier, ns, id string, pods, svcs []string) error {
	list, err := onHub.c.Dynamic.Resource(memberPolicyGVR).Namespace(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("listing MemberPolicies in %s on the broker: %w", ns, err)
	}
	mine := append(slices.Clone(pods), svcs...)
	for _, item := range list.Items {
		if item.GetName() == id {
			continue
		}
		var other brokerv1.MemberPolicy
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(item.Object, &other); err != nil {
			return fmt.Errorf("decoding MemberPolicy %s/%s: %w", ns, item.GetName(), err)
		}
		if other.Spec.CIDRs == nil {
			continue
		}
		for _, theirs := range append(slices.Clone(other.Spec.CIDRs.PodCIDRs), other.Spec.CIDRs.ServiceCIDRs...) {
			tp, err := netip.ParsePrefix(theirs)
			if err != nil {
				continue
			}
			for _, m := range mine {
				if netip.MustParsePrefix(m).Overlaps(tp) {
					return fmt.Errorf("%s overlaps %s, approved for cluster %s: each cluster's ranges must be its own; give cluster %s's real ranges, or correct MemberPolicy %s/%s on the hub", m, theirs, other.Name, id, ns, other.Name)
				}
			}
		}
	}
	return nil
}
