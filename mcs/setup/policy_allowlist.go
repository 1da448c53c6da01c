package setup

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// AllowlistPrefix starts the name of the admission policy (and of its
// binding) that holds each member to what the hub admin approved for it in
// its MemberPolicy; AllowlistPolicyName completes it.
const AllowlistPrefix = "isthmus-broker-member-allowlist-"

// AllowlistPolicyName names the allowlist admission policy of the broker in
// namespace ns. Like PolicyName, one per broker namespace.
func AllowlistPolicyName(ns string) string { return AllowlistPrefix + ns }

// Shortest prefixes a member may claim whatever its allowlist says: a
// shorter one would route a large share of the address space (half the
// internet for 0.0.0.0/1) into that member's tunnel on every other gateway.
const (
	minIPv4PrefixLength = 8
	minIPv6PrefixLength = 32
)

// reservedRanges are ranges no member may claim any part of, whatever its
// allowlist says: a route for them on another member's gateway node would
// capture the node's own loopback, link-local (which holds the cloud
// metadata address 169.254.169.254) or multicast traffic.
var reservedRanges = []string{
	"0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4",
	"::/128", "::1/128", "fe80::/10", "ff00::/8",
}

// maxMemberTokenTTL caps the tokens a member may mint for itself (join's
// default lifetime): without a cap, whoever holds a member's credential
// could mint a token that outlives any rotation of it, valid until the
// member's ServiceAccount is deleted.
const (
	maxMemberTokenTTL     = 90 * 24 * time.Hour
	maxMemberTokenTTLText = "90 days"
)

// celList renders strings as a CEL list literal.
func celList(items []string) string {
	quoted := make([]string, len(items))
	for i, s := range items {
		quoted[i] = "'" + s + "'"
	}
	return "[" + strings.Join(quoted, ", ") + "]"
}

// notSubresource holds on writes of a record itself, not of its status:
// the status endpoint ignores everything but the status, so a record's
// spec and metadata are judged when they are written, and a peer's
// heartbeat report never fails for what the record's owner wrote earlier.
const notSubresource = "!(has(request.subResource) && request.subResource != '')"

// claimedCIDRs is the CEL list of every range a Cluster record claims.
const claimedCIDRs = "(object.spec.?podCIDRs.orValue([]) + object.spec.?serviceCIDRs.orValue([]))"

// sensibleCIDR is the CEL test a claimed range c must pass for every
// member: long enough a prefix, and clear of the reserved ranges.
func sensibleCIDR(c string) string {
	return fmt.Sprintf("(cidr(%[1]s).prefixLength() >= (cidr(%[1]s).ip().family() == 4 ? %[2]d : %[3]d) && !%[4]s.exists(r, cidr(r).containsIP(cidr(%[1]s).ip()) || cidr(%[1]s).containsIP(cidr(r).ip())))",
		c, minIPv4PrefixLength, minIPv6PrefixLength, celList(reservedRanges))
}

// universalValidations are the rules the member-writes policy applies to
// every member's writes, with or without a MemberPolicy: tokens it mints
// for itself are capped, the ranges a Cluster record claims must be
// sensible, and broker EndpointSlices must
// carry only global unicast IP addresses (never loopback, link-local, such
// as the metadata address, multicast or FQDNs that importers would dial).
func universalValidations() []admissionv1.Validation {
	isCluster := "request.resource.resource == 'clusters' && object != null && " + notSubresource
	isSlice := "request.resource.resource == 'endpointslices' && object != null"
	goodAddress := "(isIP(a) && ip(a).isGlobalUnicast())"
	return []admissionv1.Validation{
		{
			Expression: fmt.Sprintf("request.resource.resource != 'serviceaccounts' || object == null || !has(object.spec.expirationSeconds) || object.spec.expirationSeconds <= %d", int64(maxMemberTokenTTL.Seconds())),
			MessageExpression: fmt.Sprintf(`"rule token-lifetime: member '" + variables.me + "' may request tokens of at most %d seconds (%s), not " + string(object.spec.expirationSeconds) + ": ask for a shorter expirationSeconds and renew"`,
				int64(maxMemberTokenTTL.Seconds()), maxMemberTokenTTLText),
			Reason: ptr(metav1.StatusReasonForbidden),
		},
		{
			Expression: fmt.Sprintf("!(%s) || %s.all(c, %s)", isCluster, claimedCIDRs, sensibleCIDR("c")),
			MessageExpression: fmt.Sprintf(`"rule sensible-cidrs: member '" + variables.me + "' claims " + %s.filter(c, !%s).join(", ") + "; no member may claim a default route, an IPv4 prefix shorter than /%d, an IPv6 prefix shorter than /%d, or any part of %s: publish only the cluster's own pod and service ranges"`,
				claimedCIDRs, sensibleCIDR("c"), minIPv4PrefixLength, minIPv6PrefixLength, strings.Join(reservedRanges, ", ")),
			Reason: ptr(metav1.StatusReasonForbidden),
		},
		{
			Expression:        fmt.Sprintf("!(%s) || (object.addressType in ['IPv4', 'IPv6'] && (dyn(object.?endpoints.orValue([])) == null ? dyn([]) : dyn(object.endpoints)).all(e, e.addresses.all(a, %s)))", isSlice, goodAddress),
			MessageExpression: fmt.Sprintf(`"rule endpoint-addresses: broker EndpointSlice " + request.name + " must have addressType IPv4 or IPv6 and only global unicast addresses (it has addressType " + object.addressType + ")" + (object.addressType in ['IPv4', 'IPv6'] ? "; refused: " + (dyn(object.?endpoints.orValue([])) == null ? dyn([]) : dyn(object.endpoints)).map(e, e.addresses.filter(a, !%s).join(", ")).filter(s, s != "").join(", ") : "") + ": publish only the Service's pod addresses"`, goodAddress),
			Reason:            ptr(metav1.StatusReasonForbidden),
		},
	}
}

// metadataBytes is the CEL expression for the bytes of a string map m
// (labels, annotations): its keys and values.
func metadataBytes(m string) string {
	return fmt.Sprintf("(has(%[1]s) ? %[1]s.map(k, size(bytes(k)) + size(bytes(%[1]s[k]))).sum() : 0)", m)
}

// allowlistPolicy holds each member's records to its MemberPolicy: each
// member's binding (memberAllowlistBinding, written by join) hands it that
// member's MemberPolicy for the records labelled with its cluster id, and
// each validation judges only the writer's own MemberPolicy (the one named
// after its cluster id), and only its own records. A member with no
// MemberPolicy is held to the universal rules alone.
func allowlistPolicy(ns string) *admissionv1.ValidatingAdmissionPolicy {
	prefix := memberUserPrefix(ns)
	fail := admissionv1.Fail
	writes := []admissionv1.OperationType{admissionv1.Create, admissionv1.Update}
	approved := func(kind string) string { return "params.spec.cidrs.?" + kind + ".orValue([])" }
	inApproved := func(kind, c string) string {
		return fmt.Sprintf("%s.exists(p, cidr(p).containsCIDR(%s))", approved(kind), c)
	}
	// Addresses that are no global unicast IPs are left to the universal
	// rule endpoint-addresses.
	addressApproved := fmt.Sprintf("(!(isIP(a) && ip(a).isGlobalUnicast()) || %s.exists(p, cidr(p).containsIP(ip(a))))", approved("podCIDRs"))
	cidrRule := func(rule, field, kind, flag string) admissionv1.Validation {
		list := "object.spec.?" + field + ".orValue([])"
		return admissionv1.Validation{
			// A range that is not sensible is left to the universal rule,
			// so that each refusal names one rule.
			Expression: fmt.Sprintf("!variables.judged || !variables.isCluster || !has(params.spec.cidrs) || %s.all(c, !%s || %s)", list, sensibleCIDR("c"), inApproved(kind, "c")),
			MessageExpression: fmt.Sprintf(`"rule %[1]s: member '" + variables.me + "' claims " + %[2]s.filter(c, !%[3]s).join(", ") + " in spec.%[4]s, outside the ranges the hub admin approved for it (" + %[5]s.join(", ") + "): publish only the approved ranges, or have the hub admin run isthmusctl join %[6]s again with the cluster's real ranges"`,
				rule, list, inApproved(kind, "c"), field, approved(kind), flag),
			Reason: ptr(metav1.StatusReasonForbidden),
		}
	}
	recordBytes := metadataBytes("object.metadata.labels") + " + " + metadataBytes("object.metadata.annotations")
	exportedBytes := metadataBytes("object.spec.exportedLabels") + " + " + metadataBytes("object.spec.exportedAnnotations")
	return &admissionv1.ValidatingAdmissionPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: admissionv1.SchemeGroupVersion.String(), Kind: "ValidatingAdmissionPolicy"},
		ObjectMeta: metav1.ObjectMeta{Name: AllowlistPolicyName(ns), Labels: partOf},
		Spec: admissionv1.ValidatingAdmissionPolicySpec{
			FailurePolicy: &fail,
			ParamKind:     &admissionv1.ParamKind{APIVersion: brokerv1.SchemeGroupVersion.String(), Kind: "MemberPolicy"},
			MatchConstraints: &admissionv1.MatchResources{
				NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{corev1.LabelMetadataName: ns}},
				ResourceRules: []admissionv1.NamedRuleWithOperations{
					{RuleWithOperations: admissionv1.RuleWithOperations{Operations: writes, Rule: admissionv1.Rule{
						APIGroups: []string{brokerv1.GroupName}, APIVersions: []string{"*"},
						Resources: []string{"clusters", "exportedservices"}}}},
					{RuleWithOperations: admissionv1.RuleWithOperations{Operations: writes, Rule: admissionv1.Rule{
						APIGroups: []string{"discovery.k8s.io"}, APIVersions: []string{"*"}, Resources: []string{"endpointslices"}}}},
					// Not Leases: their renewals are nearly every write a
					// broker takes at rest, and the apiserver matches each
					// of this policy's bindings (one per member) against
					// every write the policy matches, so a renewal cost
					// O(members) at the hub (bench/scale's profile). The
					// member policy caps a Lease's metadata instead.
				},
			},
			MatchConditions: []admissionv1.MatchCondition{{
				Name:       "requester-is-a-member",
				Expression: fmt.Sprintf("request.userInfo.username.startsWith('%s')", prefix),
			}},
			Variables: []admissionv1.Variable{
				{Name: "me", Expression: fmt.Sprintf("request.userInfo.username.substring(%d)", len(prefix))},
				// Only the writer's own MemberPolicy judges, and only records
				// that are and were its own: the member-writes policy already
				// refuses the rest (a record taken over from another member
				// among them), with its own message.
				{Name: "judged", Expression: fmt.Sprintf("params.metadata.name == variables.me && object != null && %s && (%s) == variables.me && (oldObject == null || (%s) == variables.me)", notSubresource, ownerOf("object"), ownerOf("oldObject"))},
				{Name: "isCluster", Expression: "request.resource.resource == 'clusters'"},
				{Name: "isSlice", Expression: "request.resource.resource == 'endpointslices'"},
				{Name: "isExport", Expression: "request.resource.resource == 'exportedservices'"},
				{Name: "maxEndpoints", Expression: fmt.Sprintf("params.spec.?limits.?maxEndpointsPerSlice.orValue(%d)", brokerv1.DefaultMaxEndpointsPerSlice)},
				{Name: "maxMetadataBytes", Expression: fmt.Sprintf("params.spec.?limits.?maxMetadataBytes.orValue(%d)", brokerv1.DefaultMaxMetadataBytes)},
				{Name: "maxExports", Expression: fmt.Sprintf("params.spec.?limits.?maxExports.orValue(%d)", brokerv1.DefaultMaxExports)},
				{Name: "maxSlices", Expression: fmt.Sprintf("params.spec.?limits.?maxEndpointSlices.orValue(%d)", brokerv1.DefaultMaxEndpointSlices)},
				// When the counts were taken: the counter's time, or a
				// plain word when no counter has written any.
				{Name: "isCounted", Expression: "has(params.status) && has(params.status.observedTime)"},
				{Name: "counted", Expression: "variables.isCounted ? 'as counted at ' + string(params.status.observedTime) : 'no count yet'"},
				{Name: "exportNamespace", Expression: fmt.Sprintf("variables.isExport ? object.spec.serviceNamespace : variables.isSlice && has(object.metadata.labels) ? object.metadata.labels[?'%s'].orValue('') : ''", brokerv1.LabelServiceNamespace)},
			},
			Validations: []admissionv1.Validation{
				cidrRule("approved-pod-cidrs", "podCIDRs", "podCIDRs", "--pod-cidrs"),
				cidrRule("approved-service-cidrs", "serviceCIDRs", "serviceCIDRs", "--service-cidrs"),
				{
					Expression: fmt.Sprintf("!variables.judged || !variables.isSlice || !has(params.spec.cidrs) || (dyn(object.?endpoints.orValue([])) == null ? dyn([]) : dyn(object.endpoints)).all(e, e.addresses.all(a, %s))", addressApproved),
					MessageExpression: fmt.Sprintf(`"rule endpoints-in-pod-cidrs: member '" + variables.me + "' publishes " + (dyn(object.?endpoints.orValue([])) == null ? dyn([]) : dyn(object.endpoints)).map(e, e.addresses.filter(a, !%s).join(", ")).filter(s, s != "").join(", ") + " in EndpointSlice " + request.name + ", outside the pod ranges the hub admin approved for it (" + %s.join(", ") + "): only pod addresses of the exporting cluster may be published"`,
						addressApproved, approved("podCIDRs")),
					Reason: ptr(metav1.StatusReasonForbidden),
				},
				{
					Expression:        "!variables.judged || !(variables.isExport || variables.isSlice) || !has(params.spec.exportNamespaces) || variables.exportNamespace in params.spec.exportNamespaces",
					MessageExpression: `"rule export-namespaces: member '" + variables.me + "' may export only from namespaces " + params.spec.exportNamespaces.join(", ") + ", not from '" + variables.exportNamespace + "': export from an approved namespace, or have the hub admin run isthmusctl join --export-namespaces again"`,
					Reason:            ptr(metav1.StatusReasonForbidden),
				},
				{
					Expression:        "!variables.judged || !variables.isSlice || size((dyn(object.?endpoints.orValue([])) == null ? dyn([]) : dyn(object.endpoints))) <= variables.maxEndpoints",
					MessageExpression: `"rule max-endpoints-per-slice: member '" + variables.me + "' may put at most " + string(variables.maxEndpoints) + " endpoints in a broker EndpointSlice; " + request.name + " has " + string(size((dyn(object.?endpoints.orValue([])) == null ? dyn([]) : dyn(object.endpoints)))) + ": split it, or have the hub admin raise spec.limits.maxEndpointsPerSlice in its MemberPolicy"`,
					Reason:            ptr(metav1.StatusReasonForbidden),
				},
				countRule("max-exports", "isExport", "exports", "maxExports", "maxExports", "ExportedServices", "withdraw one of its exports (delete a ServiceExport)", "--max-exports"),
				countRule("max-endpoint-slices", "isSlice", "endpointSlices", "maxSlices", "maxEndpointSlices", "broker EndpointSlices", "withdraw an export or put more endpoints in each slice", "--max-endpoint-slices"),
				{
					Expression:        fmt.Sprintf("!variables.judged || %s <= variables.maxMetadataBytes", recordBytes),
					MessageExpression: fmt.Sprintf(`"rule max-metadata-bytes: the labels and annotations of " + request.resource.resource + " " + request.name + " of member '" + variables.me + "' take " + string(%s) + " bytes, more than the " + string(variables.maxMetadataBytes) + " allowed: drop some, or have the hub admin raise spec.limits.maxMetadataBytes in its MemberPolicy"`, recordBytes),
					Reason:            ptr(metav1.StatusReasonForbidden),
				},
				{
					Expression:        fmt.Sprintf("!variables.judged || !variables.isExport || %s <= variables.maxMetadataBytes", exportedBytes),
					MessageExpression: fmt.Sprintf(`"rule max-metadata-bytes: the exportedLabels and exportedAnnotations of export " + request.name + " of member '" + variables.me + "' take " + string(%s) + " bytes, more than the " + string(variables.maxMetadataBytes) + " allowed: export fewer labels and annotations from the ServiceExport, or have the hub admin raise spec.limits.maxMetadataBytes in its MemberPolicy"`, exportedBytes),
					Reason:            ptr(metav1.StatusReasonForbidden),
				},
			},
		},
	}
}

// countRule refuses the member a new record of one kind once the hub's
// record counter has counted as many of its records of that kind as its
// MemberPolicy's limit allows: status.<field> against the variable limit,
// which holds spec.limits.<limitField>.
// Only creation is refused: changing or deleting a record the member
// already holds never is. Without a count (no counter has written an
// observedTime) the rule lets creation through, whatever the limit; the
// per-record rules still hold (docs/security.md says why).
func countRule(rule, isKind, field, limit, limitField, what, fix, flag string) admissionv1.Validation {
	count := "params.?status.?" + field + ".orValue(0)"
	return admissionv1.Validation{
		Expression: fmt.Sprintf("!variables.judged || request.operation != 'CREATE' || !variables.%s || !variables.isCounted || %s < variables.%s", isKind, count, limit),
		MessageExpression: fmt.Sprintf(`"rule %[1]s: member '" + variables.me + "' holds " + string(%[2]s) + " %[3]s on the broker (" + variables.counted + "), its limit spec.limits.%[4]s is " + string(variables.%[5]s) + ", so " + request.name + " is refused: %[6]s first, or have the hub admin raise spec.limits.%[4]s in MemberPolicy " + params.metadata.namespace + "/" + variables.me + " (isthmusctl join %[7]s)"`,
			rule, count, what, limitField, limit, fix, flag),
		Reason: ptr(metav1.StatusReasonForbidden),
	}
}

// AllowlistBindingName names the allowlist policy's binding for member id
// of the broker in namespace ns. Bindings are cluster-scoped, so the name
// carries both; the dot keeps it unambiguous, both being DNS labels.
func AllowlistBindingName(ns, id string) string { return AllowlistPolicyName(ns) + "." + id }

// memberAllowlistBinding binds the allowlist policy for one member: its
// MemberPolicy, by name, is the only parameter, and only records labelled
// with its cluster id are matched. One binding per member makes a write's
// admission cost independent of the number of members: a single binding
// with a paramRef selector matching every MemberPolicy had the apiserver
// evaluate the policy once per member on every write (bench/README.md).
// A record of another member's label is still matched by that member's
// binding, and judged by nothing there (the policy judges only the
// writer's own records; the member-writes policy refuses the rest). With
// no MemberPolicy (deleted by the hub admin) the binding lets the write
// through, and the member-writes policy's universal rules still hold.
func memberAllowlistBinding(ns, id string) *admissionv1.ValidatingAdmissionPolicyBinding {
	allow := admissionv1.AllowAction
	return &admissionv1.ValidatingAdmissionPolicyBinding{
		TypeMeta: metav1.TypeMeta{APIVersion: admissionv1.SchemeGroupVersion.String(), Kind: "ValidatingAdmissionPolicyBinding"},
		ObjectMeta: metav1.ObjectMeta{Name: AllowlistBindingName(ns, id),
			Labels: map[string]string{"app.kubernetes.io/part-of": "isthmus", brokerv1.LabelSourceCluster: id}},
		Spec: admissionv1.ValidatingAdmissionPolicyBindingSpec{
			PolicyName: AllowlistPolicyName(ns),
			ParamRef: &admissionv1.ParamRef{
				Name:                    id,
				Namespace:               ns,
				ParameterNotFoundAction: &allow,
			},
			MatchResources: &admissionv1.MatchResources{
				ObjectSelector: &metav1.LabelSelector{MatchLabels: map[string]string{brokerv1.LabelSourceCluster: id}},
			},
			ValidationActions: []admissionv1.ValidationAction{admissionv1.Deny},
		},
	}
}

// bindMemberPolicies gives every MemberPolicy in the broker namespace its
// binding, for members joined before bindings were per member, and removes
// the single binding of those versions, which matched every MemberPolicy
// and so cost every write one evaluation per member.
func bindMemberPolicies(ctx context.Context, a *applier, ns string) error {
	list, err := a.c.Dynamic.Resource(memberPolicyGVR).Namespace(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("listing MemberPolicies in %s on the broker: %w", ns, err)
	}
	for _, mp := range list.Items {
		if _, err := a.apply(ctx, policyBindingGVR, memberAllowlistBinding(ns, mp.GetName())); err != nil {
			return err
		}
	}
	old := AllowlistPolicyName(ns)
	switch err := a.c.Dynamic.Resource(policyBindingGVR).Delete(ctx, old, metav1.DeleteOptions{}); {
	case err == nil:
		a.report(policyBindingGVR, old, "deleted (replaced by one binding per member)")
	case !apierrors.IsNotFound(err):
		return fmt.Errorf("deleting the shared allowlist binding %s: %w", old, err)
	}
	return nil
}

// checkApprovedCIDRs parses the ranges given to join for one flag and
// refuses, before anything is written, what the broker would refuse a
// member to claim anyway.
func checkApprovedCIDRs(flag string, cidrs []string) ([]string, error) {
	reserved := make([]netip.Prefix, len(reservedRanges))
	for i, r := range reservedRanges {
		reserved[i] = netip.MustParsePrefix(r)
	}
	out := make([]string, 0, len(cidrs))
	for _, s := range cidrs {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("%s: %q is not a CIDR such as 10.244.0.0/16", flag, s)
		}
		if p != p.Masked() {
			return nil, fmt.Errorf("%s: %s has host bits set: did you mean %s?", flag, p, p.Masked())
		}
		if p.Addr().Is4In6() {
			return nil, fmt.Errorf("%s: %s is an IPv4-mapped IPv6 range: give the IPv4 range", flag, p)
		}
		minBits := minIPv4PrefixLength
		if p.Addr().Is6() {
			minBits = minIPv6PrefixLength
		}
		if p.Bits() < minBits {
			return nil, fmt.Errorf("%s: %s is wider than /%d: no member may claim a default route or so large a share of the address space; give the cluster's own ranges", flag, p, minBits)
		}
		for _, r := range reserved {
			if r.Overlaps(p) {
				return nil, fmt.Errorf("%s: %s overlaps the reserved range %s (loopback, link-local, multicast or unspecified), which no member may claim", flag, p, r)
			}
		}
		out = append(out, p.String())
	}
	if len(out) > 8 {
		return nil, fmt.Errorf("%s: %d ranges, at most 8", flag, len(out))
	}
	return out, nil
}
