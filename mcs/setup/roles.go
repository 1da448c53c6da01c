package setup

import (
	"context"
	"fmt"
	"reflect"
	"strings"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// Each member has one broker identity per role, so that a compromised
// gateway node (the xDS server, the host-network tunnel) holds no more on
// the hub than its role needs:
//
//   - the agent (isthmus-member-<id>) publishes exports, slices, its Lease
//     and Cluster record, reports peers' heartbeats, and mints the tokens
//     of all three identities (renewal is the agent's, see RenewRoles);
//   - the xDS server (isthmus-xds-<id>) only reads: RBAC grants it no
//     write verb at all;
//   - the tunnel (isthmus-tunnel-<id>) may write only its own Cluster
//     record (RBAC by resourceNames), and there only spec.wireGuard, its
//     status.tunnel and its Tunnel* conditions (the tunnel-writes policy).
//
// Each identity's kubeconfig is a Secret of its own in the member
// (RoleSecret), which only that role's pods may read.

// Roles with a broker identity of their own.
const (
	RoleAgent  = "agent"
	RoleXDS    = "xds"
	RoleTunnel = "tunnel"
)

// BrokerRoles are the roles with a broker identity, the agent's first.
var BrokerRoles = []string{RoleAgent, RoleXDS, RoleTunnel}

// Names of the role identities' objects on the broker.
const (
	// ReaderRole is the Role, in the broker namespace, bound to every
	// member's xDS identity: read the records, slices and Leases, and the
	// trust bundle; nothing else.
	ReaderRole = "isthmus-reader"
	// TunnelPolicyPrefix starts the name of the admission policy (and of
	// its binding) confining each tunnel identity to its record's
	// wireGuard field and tunnel status; TunnelPolicyName completes it.
	TunnelPolicyPrefix = "isthmus-broker-tunnel-writes-"
)

// TunnelPolicyName names the tunnel-writes admission policy of the broker
// in namespace ns.
func TunnelPolicyName(ns string) string { return TunnelPolicyPrefix + ns }

// RoleSecret names the member Secret (in MemberNamespace) that holds
// role's broker kubeconfig, given the agent's Secret base: base itself for
// the agent, base-xds and base-tunnel for the others. One name (the
// chart's broker.existingSecret) thus names all three in a GitOps install.
func RoleSecret(base, role string) string {
	if role == RoleAgent {
		return base
	}
	return base + "-" + role
}

// RoleServiceAccount is the broker ServiceAccount of role in cluster id.
func RoleServiceAccount(role, id string) string {
	switch role {
	case RoleXDS:
		return brokerv1.XDSServiceAccount(id)
	case RoleTunnel:
		return brokerv1.TunnelServiceAccount(id)
	}
	return brokerv1.MemberServiceAccount(id)
}

// readerRole is the xDS identity's Role: reads only.
func readerRole(ns string) *rbacv1.Role {
	read := []string{"get", "list", "watch"}
	return &rbacv1.Role{
		TypeMeta:   metav1.TypeMeta{APIVersion: rbacv1.SchemeGroupVersion.String(), Kind: "Role"},
		ObjectMeta: metav1.ObjectMeta{Name: ReaderRole, Namespace: ns, Labels: partOf},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{brokerv1.GroupName}, Resources: []string{"clusters", "exportedservices"}, Verbs: read},
			{APIGroups: []string{discoveryv1.GroupName}, Resources: []string{"endpointslices"}, Verbs: read},
			{APIGroups: []string{coordinationv1.GroupName}, Resources: []string{"leases"}, Verbs: read},
			{APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{brokerv1.TrustBundleConfigMap}, Verbs: []string{"get"}},
		},
	}
}

// ownRoles are the per-member Roles join writes, where RBAC can name the
// member's own objects: the agent mints tokens only for its cluster's
// three identities, and the tunnel writes only its cluster's record.
// (Creating cannot be limited by name: the tunnel may create Cluster
// records, and its admission policy lets it create only its own, holding
// nothing but its cluster id and WireGuard key.)
func ownRoles(ns, id string) []*rbacv1.Role {
	role := func(name string, rules ...rbacv1.PolicyRule) *rbacv1.Role {
		return &rbacv1.Role{
			TypeMeta: metav1.TypeMeta{APIVersion: rbacv1.SchemeGroupVersion.String(), Kind: "Role"},
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns,
				Labels: map[string]string{"app.kubernetes.io/part-of": "isthmus", brokerv1.LabelSourceCluster: id}},
			Rules: rules,
		}
	}
	var identities []string
	for _, r := range BrokerRoles {
		identities = append(identities, RoleServiceAccount(r, id))
	}
	return []*rbacv1.Role{
		role(brokerv1.MemberServiceAccount(id),
			rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"serviceaccounts/token"}, ResourceNames: identities, Verbs: []string{"create"}}),
		role(brokerv1.TunnelServiceAccount(id),
			rbacv1.PolicyRule{APIGroups: []string{brokerv1.GroupName}, Resources: []string{"clusters"}, Verbs: []string{"get", "list", "watch", "create"}},
			rbacv1.PolicyRule{APIGroups: []string{brokerv1.GroupName}, Resources: []string{"clusters"}, ResourceNames: []string{id}, Verbs: []string{"patch", "update"}},
			rbacv1.PolicyRule{APIGroups: []string{brokerv1.GroupName}, Resources: []string{"clusters/status"}, ResourceNames: []string{id}, Verbs: []string{"get", "patch", "update"}}),
	}
}

// admitRoles writes, on the broker, the identities of member id's roles
// besides the agent's (whose ServiceAccount admitMember wrote): their
// ServiceAccounts, the per-member Roles and the bindings.
func admitRoles(ctx context.Context, onHub *applier, ns, id string) error {
	labels := map[string]string{"app.kubernetes.io/part-of": "isthmus", brokerv1.LabelSourceCluster: id}
	for _, r := range []string{RoleXDS, RoleTunnel} {
		if _, err := onHub.apply(ctx, serviceAccountGVR, &corev1.ServiceAccount{
			TypeMeta:                     metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
			ObjectMeta:                   metav1.ObjectMeta{Name: RoleServiceAccount(r, id), Namespace: ns, Labels: labels},
			AutomountServiceAccountToken: ptr(false),
		}); err != nil {
			return err
		}
	}
	for _, role := range ownRoles(ns, id) {
		if _, err := onHub.apply(ctx, roleGVR, role); err != nil {
			return err
		}
	}
	bind := func(name, roleName, sa string) error {
		_, err := onHub.apply(ctx, roleBindingGVR, &rbacv1.RoleBinding{
			TypeMeta:   metav1.TypeMeta{APIVersion: rbacv1.SchemeGroupVersion.String(), Kind: "RoleBinding"},
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: roleName},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: sa, Namespace: ns}},
		})
		return err
	}
	agent, xds, tunnel := brokerv1.MemberServiceAccount(id), brokerv1.XDSServiceAccount(id), brokerv1.TunnelServiceAccount(id)
	if err := bind(agent+"-own", agent, agent); err != nil {
		return err
	}
	if err := bind(xds, ReaderRole, xds); err != nil {
		return err
	}
	return bind(tunnel, tunnel, tunnel)
}

// tunnelUserPrefix is how the broker's admission sees a tunnel identity.
func tunnelUserPrefix(ns string) string {
	return "system:serviceaccount:" + ns + ":" + brokerv1.TunnelServiceAccountPrefix
}

// tunnelGuardedSpecFields are the Cluster spec fields (JSON names) a
// tunnel identity must leave as they are: every field but wireGuard. A
// test compares the list with brokerv1.ClusterSpec, so a field added
// there is guarded or the test fails.
var tunnelGuardedSpecFields = []string{"clusterID", "region", "zone", "gateways", "podCIDRs", "serviceCIDRs", "versions"}

// clusterSpecFields are the JSON names of brokerv1.ClusterSpec's fields.
func clusterSpecFields() []string {
	var out []string
	t := reflect.TypeOf(brokerv1.ClusterSpec{})
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		out = append(out, name)
	}
	return out
}

// tunnelPolicy confines each tunnel identity to its own Cluster record:
// on the record itself, only spec.wireGuard may change (and a record it
// creates holds only its cluster id, its WireGuard key and the owner
// label); on the status, only status.tunnel and the Tunnel* conditions.
// It never deletes. RBAC already limits it to the record by name; this
// judges the content, which RBAC cannot.
func tunnelPolicy(ns string) *admissionv1.ValidatingAdmissionPolicy {
	prefix := tunnelUserPrefix(ns)
	fail := admissionv1.Fail
	writes := []admissionv1.OperationType{admissionv1.Create, admissionv1.Update, admissionv1.Delete}
	// same(x) holds when the field x of the spec (or of the metadata) is
	// as it was; on a create, when it is absent.
	var unchanged, changed []string
	for _, f := range tunnelGuardedSpecFields {
		if f == "clusterID" {
			continue
		}
		same := fmt.Sprintf("(oldObject == null ? !has(object.spec.%[1]s) : (has(object.spec.%[1]s) == has(oldObject.spec.%[1]s) && (!has(object.spec.%[1]s) || object.spec.%[1]s == oldObject.spec.%[1]s)))", f)
		unchanged = append(unchanged, same)
		changed = append(changed, fmt.Sprintf("(%s ? [] : ['spec.%s'])", same, f))
	}
	for _, f := range []string{"annotations", "finalizers", "ownerReferences"} {
		same := fmt.Sprintf("(oldObject == null ? !has(object.metadata.%[1]s) : object.metadata.?%[1]s.orValue(%[2]s) == oldObject.metadata.?%[1]s.orValue(%[2]s))", f, map[bool]string{true: "{}", false: "[]"}[f == "annotations"])
		unchanged = append(unchanged, same)
		changed = append(changed, fmt.Sprintf("(%s ? [] : ['metadata.%s'])", same, f))
	}
	labels := fmt.Sprintf("(oldObject == null ? object.metadata.?labels.orValue({}) == {'%[1]s': variables.me} : object.metadata.?labels.orValue({}) == oldObject.metadata.?labels.orValue({}))", brokerv1.LabelSourceCluster)
	unchanged = append(unchanged, labels, "object.spec.clusterID == variables.me")
	changed = append(changed, fmt.Sprintf("(%s ? [] : ['metadata.labels'])", labels), "(object.spec.clusterID == variables.me ? [] : ['spec.clusterID'])")
	tunnelConds := func(o string) string {
		return fmt.Sprintf("(has(%[1]s.status) && has(%[1]s.status.conditions) ? %[1]s.status.conditions.filter(c, !c.type.startsWith('Tunnel')) : [])", o)
	}
	return &admissionv1.ValidatingAdmissionPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: admissionv1.SchemeGroupVersion.String(), Kind: "ValidatingAdmissionPolicy"},
		ObjectMeta: metav1.ObjectMeta{Name: TunnelPolicyName(ns), Labels: partOf},
		Spec: admissionv1.ValidatingAdmissionPolicySpec{
			FailurePolicy: &fail,
			MatchConstraints: &admissionv1.MatchResources{
				NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{corev1.LabelMetadataName: ns}},
				ResourceRules: []admissionv1.NamedRuleWithOperations{
					{RuleWithOperations: admissionv1.RuleWithOperations{Operations: writes, Rule: admissionv1.Rule{
						APIGroups: []string{"*"}, APIVersions: []string{"*"}, Resources: []string{"*/*"}}}},
				},
			},
			MatchConditions: []admissionv1.MatchCondition{{
				Name:       "requester-is-a-tunnel",
				Expression: fmt.Sprintf("request.userInfo.username.startsWith('%s')", prefix),
			}},
			Variables: []admissionv1.Variable{
				{Name: "me", Expression: fmt.Sprintf("request.userInfo.username.substring(%d)", len(prefix))},
				{Name: "isStatus", Expression: "has(request.subResource) && request.subResource == 'status'"},
			},
			Validations: []admissionv1.Validation{
				{
					Expression:        "request.operation != 'DELETE' && request.resource.group == '" + brokerv1.GroupName + "' && request.resource.resource == 'clusters' && (object != null ? object.metadata.name : request.name) == variables.me",
					MessageExpression: `"rule tunnel-own-record-only: the tunnel of cluster '" + variables.me + "' may only create and change its own Cluster record " + variables.me + ", not " + request.operation + " " + request.resource.resource + " " + request.name`,
					Reason:            ptr(metav1.StatusReasonForbidden),
				},
				{
					Expression: "request.operation == 'DELETE' || request.resource.resource != 'clusters' || variables.isStatus || " + strings.Join(unchanged, " &&\n  "),
					MessageExpression: `"rule tunnel-wireguard-only: the tunnel of cluster '" + variables.me + "' may change only spec.wireGuard of its Cluster record (and create it with only its cluster id, WireGuard key and label ` +
						brokerv1.LabelSourceCluster + `); refused a change of " + (` + strings.Join(changed, " + ") + `).join(", ") + "; the agent publishes the rest"`,
					Reason: ptr(metav1.StatusReasonForbidden),
				},
				{
					Expression:        fmt.Sprintf("request.resource.resource != 'clusters' || !variables.isStatus || oldObject == null || %s == %s", tunnelConds("object"), tunnelConds("oldObject")),
					MessageExpression: `"rule tunnel-status-only: the tunnel of cluster '" + variables.me + "' may write only status.tunnel and the Tunnel* conditions of its Cluster record, not the " + ` + tunnelConds("object") + `.map(c, c.type).join(", ") + " condition(s)"`,
					Reason:            ptr(metav1.StatusReasonForbidden),
				},
			},
		},
	}
}

func tunnelBinding(ns string) *admissionv1.ValidatingAdmissionPolicyBinding {
	return &admissionv1.ValidatingAdmissionPolicyBinding{
		TypeMeta:   metav1.TypeMeta{APIVersion: admissionv1.SchemeGroupVersion.String(), Kind: "ValidatingAdmissionPolicyBinding"},
		ObjectMeta: metav1.ObjectMeta{Name: TunnelPolicyName(ns), Labels: partOf},
		Spec: admissionv1.ValidatingAdmissionPolicyBindingSpec{
			PolicyName:        TunnelPolicyName(ns),
			ValidationActions: []admissionv1.ValidationAction{admissionv1.Deny},
		},
	}
}
