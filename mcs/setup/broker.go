package setup

import (
	"context"
	"fmt"
	"io"
	"strings"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	flowcontrolv1 "k8s.io/api/flowcontrol/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/api/crds"
)

// BrokerOptions say how to install the broker.
type BrokerOptions struct {
	// Namespace is the broker namespace; empty means isthmus-broker.
	Namespace string
	// Certificates, when set, makes the clusterset root (Secret
	// isthmus-root-ca, created once and never replaced) and publishes its
	// bundle (ConfigMap isthmus-trust-bundle). Without it no identities are
	// set up.
	Certificates Certificates
	// ClustersetDomain is the parent of every cluster's SPIFFE trust
	// domain; empty means clusterset.isthmus.
	ClustersetDomain string
	// RootCACert and RootCAKey (PEM) import an operator's own root instead
	// of making one.
	RootCACert, RootCAKey []byte
}

// Names of the broker's shared objects.
const (
	// MemberRole is the Role, in the broker namespace, bound to every
	// member's identity.
	MemberRole = "isthmus-member"
	// PolicyPrefix starts the name of the admission policy (and of its
	// binding) that lets a member write only its own records; PolicyName
	// completes it.
	PolicyPrefix = "isthmus-broker-member-writes-"
)

// PolicyName names the admission policy of the broker in namespace ns.
// The policy is cluster-scoped, so each broker namespace on a hub has its
// own: a second broker must not rewrite the first's policy to select only
// its own namespace, which would leave the first's records unguarded.
func PolicyName(ns string) string { return PolicyPrefix + ns }

var (
	namespaceGVR     = corev1.SchemeGroupVersion.WithResource("namespaces")
	roleGVR          = rbacv1.SchemeGroupVersion.WithResource("roles")
	roleBindingGVR   = rbacv1.SchemeGroupVersion.WithResource("rolebindings")
	policyGVR        = admissionv1.SchemeGroupVersion.WithResource("validatingadmissionpolicies")
	policyBindingGVR = admissionv1.SchemeGroupVersion.WithResource("validatingadmissionpolicybindings")
)

// InstallBroker installs the broker on the hub cluster: its namespace, the
// broker CRDs, the Role every member is bound to, the admission policies
// that confine each member to its own records and to its MemberPolicy, and
// the allowlist binding of every member that already has a MemberPolicy.
// It reports each object to out.
func InstallBroker(ctx context.Context, hub *Clients, opts BrokerOptions, out io.Writer) error {
	ns := opts.Namespace
	if ns == "" {
		ns = brokerv1.DefaultBrokerNamespace
	}
	a := &applier{c: hub, out: out}
	objs := BrokerObjects(ns)
	// The namespace first, then the CRDs, then what lives in or refers to both.
	if _, err := a.apply(ctx, namespaceGVR, objs[0]); err != nil {
		return err
	}
	brokerCRDs, err := crds.Broker()
	if err != nil {
		return err
	}
	if err := a.applyCRDs(ctx, brokerCRDs); err != nil {
		return err
	}
	if opts.Certificates != nil {
		if err := installRoot(ctx, a, ns, opts); err != nil {
			return err
		}
	}
	// The rest in order: the Roles, each policy before its binding, the
	// fairness objects.
	for _, obj := range objs[1:] {
		if _, err := a.apply(ctx, gvrOf(obj), obj); err != nil {
			return err
		}
	}
	if err := bindMemberPolicies(ctx, a, ns); err != nil {
		return err
	}
	// The record counter is a workload, which broker install does not run.
	if note := recordCounterNote(ctx, hub, ns, ""); note != "" {
		fmt.Fprintln(out, "note: "+note)
	}
	return nil
}

// gvrOf is the resource of one of BrokerObjects' objects.
func gvrOf(obj runtime.Object) schema.GroupVersionResource {
	switch obj.(type) {
	case *corev1.ServiceAccount:
		return serviceAccountGVR
	case *rbacv1.Role:
		return roleGVR
	case *rbacv1.RoleBinding:
		return roleBindingGVR
	case *rbacv1.ClusterRole:
		return rbacv1.SchemeGroupVersion.WithResource("clusterroles")
	case *rbacv1.ClusterRoleBinding:
		return rbacv1.SchemeGroupVersion.WithResource("clusterrolebindings")
	case *admissionv1.ValidatingAdmissionPolicy:
		return policyGVR
	case *admissionv1.ValidatingAdmissionPolicyBinding:
		return policyBindingGVR
	case *flowcontrolv1.PriorityLevelConfiguration:
		return flowcontrolv1.SchemeGroupVersion.WithResource("prioritylevelconfigurations")
	case *flowcontrolv1.FlowSchema:
		return flowcontrolv1.SchemeGroupVersion.WithResource("flowschemas")
	}
	return namespaceGVR
}

// BrokerObjects are the broker's objects besides its CRDs, for the broker
// namespace ns, in the order they are applied: the Namespace, the member
// Role and the xDS identities' read-only Role, the member-writes admission
// policy and its binding, the allowlist admission policy (judging each
// member by its MemberPolicy; join binds it once per member), the
// tunnel-writes policy and its binding, the ClusterRole letting members
// check those policies and its binding, and the API Priority and Fairness
// level and FlowSchema of the members' requests, and the identity of the
// hub's record counter (hubQuotaObjects). The isthmus-broker Helm
// chart is checked
// against them.
func BrokerObjects(ns string) []runtime.Object {
	reader, readerBinding := policyReaderObjects(ns)
	plc, fs := fairnessObjects(ns)
	quotaSA, quotaRole, quotaBinding := hubQuotaObjects(ns)
	return []runtime.Object{
		&corev1.Namespace{
			TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"},
			ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{
				"app.kubernetes.io/part-of": "isthmus",
				// Only the hub's record counter runs in the broker
				// namespace (the broker chart's), as a restricted pod.
				"pod-security.kubernetes.io/enforce": "restricted",
			}},
		},
		memberRole(ns),
		readerRole(ns),
		memberPolicy(ns),
		&admissionv1.ValidatingAdmissionPolicyBinding{
			TypeMeta:   metav1.TypeMeta{APIVersion: admissionv1.SchemeGroupVersion.String(), Kind: "ValidatingAdmissionPolicyBinding"},
			ObjectMeta: metav1.ObjectMeta{Name: PolicyName(ns), Labels: partOf},
			Spec: admissionv1.ValidatingAdmissionPolicyBindingSpec{
				PolicyName:        PolicyName(ns),
				ValidationActions: []admissionv1.ValidationAction{admissionv1.Deny},
			},
		},
		allowlistPolicy(ns),
		tunnelPolicy(ns),
		tunnelBinding(ns),
		reader,
		readerBinding,
		plc,
		fs,
		quotaSA,
		quotaRole,
		quotaBinding,
	}
}

var partOf = map[string]string{"app.kubernetes.io/part-of": "isthmus"}

// memberRole is what every member's agent may do in the broker namespace:
// manage broker records, EndpointSlices and Leases (the admission policy
// narrows writes to its own), and read the trust bundle ConfigMap.
// Nothing else: in particular no Secrets, so never the clusterset root.
// Requesting tokens, which renews the member's credentials, is granted by
// the member's own Role (ownRoles) for its own identities by name.
func memberRole(ns string) *rbacv1.Role {
	rw := []string{"get", "list", "watch", "create", "update", "patch", "delete"}
	return &rbacv1.Role{
		TypeMeta:   metav1.TypeMeta{APIVersion: rbacv1.SchemeGroupVersion.String(), Kind: "Role"},
		ObjectMeta: metav1.ObjectMeta{Name: MemberRole, Namespace: ns, Labels: partOf},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{brokerv1.GroupName}, Resources: []string{"clusters", "exportedservices"}, Verbs: rw},
			{APIGroups: []string{brokerv1.GroupName}, Resources: []string{"clusters/status", "exportedservices/status"}, Verbs: []string{"get", "update", "patch"}},
			{APIGroups: []string{discoveryv1.GroupName}, Resources: []string{"endpointslices"}, Verbs: rw},
			{APIGroups: []string{coordinationv1.GroupName}, Resources: []string{"leases"}, Verbs: rw},
			{APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{brokerv1.TrustBundleConfigMap}, Verbs: []string{"get"}},
		},
	}
}

// memberUserPrefix is how the broker's admission sees a member's identity:
// the ServiceAccount isthmus-member-<cluster id> in the broker namespace.
func memberUserPrefix(ns string) string {
	return "system:serviceaccount:" + ns + ":" + brokerv1.MemberServiceAccountPrefix
}

// memberPolicy is the admission policy that lets a member create, change
// and delete only the records whose source cluster is itself. The writer's
// cluster id comes from its authenticated user name, never from the request
// body. Each rule's message starts with the rule's name, so a denial says
// which rule denied it.
func memberPolicy(ns string) *admissionv1.ValidatingAdmissionPolicy {
	prefix := memberUserPrefix(ns)
	fail := admissionv1.Fail
	writes := []admissionv1.OperationType{admissionv1.Create, admissionv1.Update, admissionv1.Delete}
	owner := ownerOf
	return &admissionv1.ValidatingAdmissionPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: admissionv1.SchemeGroupVersion.String(), Kind: "ValidatingAdmissionPolicy"},
		ObjectMeta: metav1.ObjectMeta{Name: PolicyName(ns), Labels: partOf},
		Spec: admissionv1.ValidatingAdmissionPolicySpec{
			FailurePolicy: &fail,
			MatchConstraints: &admissionv1.MatchResources{
				NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{corev1.LabelMetadataName: ns}},
				ResourceRules: []admissionv1.NamedRuleWithOperations{
					{RuleWithOperations: admissionv1.RuleWithOperations{Operations: writes, Rule: admissionv1.Rule{
						APIGroups: []string{brokerv1.GroupName}, APIVersions: []string{"*"},
						Resources: []string{"clusters", "clusters/status", "exportedservices", "exportedservices/status"}}}},
					{RuleWithOperations: admissionv1.RuleWithOperations{Operations: writes, Rule: admissionv1.Rule{
						APIGroups: []string{discoveryv1.GroupName}, APIVersions: []string{"*"}, Resources: []string{"endpointslices"}}}},
					{RuleWithOperations: admissionv1.RuleWithOperations{Operations: writes, Rule: admissionv1.Rule{
						APIGroups: []string{coordinationv1.GroupName}, APIVersions: []string{"*"}, Resources: []string{"leases"}}}},
					{RuleWithOperations: admissionv1.RuleWithOperations{Operations: []admissionv1.OperationType{admissionv1.Create}, Rule: admissionv1.Rule{
						APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"serviceaccounts/token"}}}},
				},
			},
			// Only members are confined; operators and controllers with
			// their own RBAC are not.
			MatchConditions: []admissionv1.MatchCondition{{
				Name:       "requester-is-a-member",
				Expression: fmt.Sprintf("request.userInfo.username.startsWith('%s')", prefix),
			}},
			Variables: []admissionv1.Variable{
				{Name: "me", Expression: fmt.Sprintf("request.userInfo.username.substring(%d)", len(prefix))},
				{Name: "isToken", Expression: "request.resource.resource == 'serviceaccounts'"},
				{Name: "newOwner", Expression: owner("object")},
				{Name: "oldOwner", Expression: owner("oldObject")},
				// A member may report what it observes of another: the
				// Heartbeat condition in another Cluster's status, and
				// nothing else there (the status endpoint ignores the rest of
				// the object): every other condition and the tunnel status
				// must stay as they were.
				{Name: "peerHeartbeat", Expression: fmt.Sprintf(`request.resource.resource == 'clusters' && has(request.subResource) && request.subResource == 'status' && request.operation == 'UPDATE' &&
  %[1]s == %[2]s && %[3]s == %[4]s`, otherConditions("object"), otherConditions("oldObject"), tunnelStatusOf("object"), tunnelStatusOf("oldObject"))},
			},
			Validations: append([]admissionv1.Validation{
				{
					Expression: fmt.Sprintf("!variables.isToken || request.name in ['%s' + variables.me, '%s' + variables.me, '%s' + variables.me]",
						brokerv1.MemberServiceAccountPrefix, brokerv1.XDSServiceAccountPrefix, brokerv1.TunnelServiceAccountPrefix),
					MessageExpression: fmt.Sprintf(`"rule own-token-only: member '" + variables.me + "' may request tokens only for its own identities %s" + variables.me + ", %s" + variables.me + " and %s" + variables.me + ", not " + request.name`,
						brokerv1.MemberServiceAccountPrefix, brokerv1.XDSServiceAccountPrefix, brokerv1.TunnelServiceAccountPrefix),
					Reason: ptr(metav1.StatusReasonForbidden),
				},
				{
					Expression: "variables.isToken || request.operation == 'DELETE' || variables.newOwner == variables.me || variables.peerHeartbeat",
					MessageExpression: fmt.Sprintf(`"rule own-records-only: member '" + variables.me + "' may only write records of its own cluster; this " + request.resource.resource + " must carry label %s=" + variables.me + " and name cluster '" + variables.me + "' in %s"`,
						brokerv1.LabelSourceCluster, ownerFieldsHelp),
					Reason: ptr(metav1.StatusReasonForbidden),
				},
				{
					Expression: fmt.Sprintf("request.resource.resource != 'leases' || object == null || %s + %s <= %d",
						metadataBytes("object.metadata.labels"), metadataBytes("object.metadata.annotations"), brokerv1.DefaultMaxMetadataBytes),
					MessageExpression: fmt.Sprintf(`"rule lease-metadata-bytes: the labels and annotations of Lease " + request.name + " of member '" + variables.me + "' take more than %d bytes: a heartbeat Lease needs only its %s label"`,
						brokerv1.DefaultMaxMetadataBytes, brokerv1.LabelSourceCluster),
					Reason: ptr(metav1.StatusReasonForbidden),
				},
				{
					Expression:        "variables.isToken || request.operation == 'CREATE' || variables.oldOwner == variables.me || variables.peerHeartbeat",
					MessageExpression: `"rule existing-records-of-others: " + request.resource.resource + " " + request.name + " belongs to another cluster; member '" + variables.me + "' may only change or delete its own records"`,
					Reason:            ptr(metav1.StatusReasonForbidden),
				},
			}, universalValidations()...),
		},
	}
}

// ownerOf is the CEL expression for the cluster the record o (object or
// oldObject) belongs to: the source-cluster label, which must agree with
// the record's own cluster field (a Cluster's name, a Lease's name after
// its prefix, an ExportedService's sourceCluster); empty when they differ.
func ownerOf(o string) string {
	label := fmt.Sprintf("(has(%[1]s.metadata.labels) ? %[1]s.metadata.labels[?'%[2]s'].orValue('') : '')", o, brokerv1.LabelSourceCluster)
	id := fmt.Sprintf(`(request.resource.resource == 'clusters' ? %[1]s.metadata.name :
  request.resource.resource == 'leases' ? (%[1]s.metadata.name.startsWith('%[2]s') ? %[1]s.metadata.name.substring(%[3]d) : '') :
  request.resource.resource == 'exportedservices' ? %[1]s.spec.sourceCluster : %[4]s)`, o, brokerv1.LeasePrefix, len(brokerv1.LeasePrefix), label)
	return fmt.Sprintf("%[1]s == null ? '' : (%[2]s == %[3]s ? %[2]s : '')", o, label, id)
}

// otherConditions is the CEL list of a Cluster's status conditions other
// than the Heartbeat condition.
func otherConditions(o string) string {
	return fmt.Sprintf("(has(%[1]s.status) && has(%[1]s.status.conditions) ? %[1]s.status.conditions.filter(c, c.type != '%[2]s') : [])", o, brokerv1.ClusterConditionHeartbeat)
}

// tunnelStatusOf is the CEL list holding a Cluster's status.tunnel, empty
// when it has none. The ClusterStatus schema has no other fields, so with
// otherConditions it covers the whole status a peer could touch.
func tunnelStatusOf(o string) string {
	return fmt.Sprintf("(has(%[1]s.status) && has(%[1]s.status.tunnel) ? [%[1]s.status.tunnel] : [])", o)
}

var ownerFieldsHelp = strings.Join([]string{
	"its name (Cluster)",
	"its name after '" + brokerv1.LeasePrefix + "' (Lease)",
	"spec.sourceCluster (ExportedService)",
}, ", ")

func ptr[T any](v T) *T { return &v }
