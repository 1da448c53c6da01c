package setup

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// TestTunnelPolicyGuardsEverySpecField pins the tunnel-writes policy to
// the Cluster type: every spec field but wireGuard is one the tunnel may
// not change, so a field added to ClusterSpec must be added to the list.
func TestTunnelPolicyGuardsEverySpecField(t *testing.T) {
	var want []string
	for _, f := range clusterSpecFields() {
		if f != "wireGuard" {
			want = append(want, f)
		}
	}
	got := slices.Clone(tunnelGuardedSpecFields)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("tunnelGuardedSpecFields = %v, want every ClusterSpec field but wireGuard: %v", got, want)
	}
}

// asRole returns broker clients acting with the identity of a member's
// role as join stored it in the role's Secret.
func asRole(t *testing.T, member *Clients, role string) *Clients {
	t.Helper()
	s, err := member.Kube.CoreV1().Secrets(MemberNamespace).Get(context.Background(), RoleSecret(BrokerSecret, role), metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the %s role's broker Secret: %v", role, err)
	}
	cfg, err := clientcmd.RESTConfigFromKubeConfig(s.Data[BrokerSecretKey])
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewClients(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func wantForbidden(t *testing.T, what string, err error) {
	t.Helper()
	if !apierrors.IsForbidden(err) {
		t.Errorf("%s: %v, want Forbidden", what, err)
	}
}

// TestRoleIdentities (M4, M7): join gives each of a member's roles its own
// broker identity, stored in a Secret of its own. Asked of the hub's
// authorizer (SubjectAccessReview), each may do its job and no more; then
// each writes with its real credential: the xDS identity reads and writes
// nothing, the tunnel's changes its record's WireGuard key and tunnel
// status and nothing else, with a message naming what it may not change,
// and the agent mints tokens for its own cluster's identities only.
func TestRoleIdentities(t *testing.T) {
	hub, a, _ := joined(t)
	ctx := ctxFor(t)
	ns := brokerv1.DefaultBrokerNamespace
	user := func(sa string) string { return "system:serviceaccount:" + ns + ":" + sa }

	t.Run("SubjectAccessReviews", func(t *testing.T) {
		type check struct {
			sa, verb, group, resource, sub, name string
			allowed                              bool
		}
		agent, xds, tunnel := brokerv1.MemberServiceAccount(alpha), brokerv1.XDSServiceAccount(alpha), brokerv1.TunnelServiceAccount(alpha)
		g := brokerv1.GroupName
		checks := []check{
			{xds, "list", g, "clusters", "", "", true},
			{xds, "watch", g, "exportedservices", "", "", true},
			{xds, "list", "discovery.k8s.io", "endpointslices", "", "", true},
			{xds, "list", "coordination.k8s.io", "leases", "", "", true},
			{xds, "get", "", "configmaps", "", brokerv1.TrustBundleConfigMap, true},
			{xds, "create", g, "clusters", "", "", false},
			{xds, "patch", g, "clusters", "", alpha, false},
			{xds, "update", g, "clusters", "status", alpha, false},
			{xds, "create", g, "exportedservices", "", "", false},
			{xds, "create", "discovery.k8s.io", "endpointslices", "", "", false},
			{xds, "update", "coordination.k8s.io", "leases", "", brokerv1.LeaseName(alpha), false},
			{xds, "create", "", "serviceaccounts", "token", xds, false},
			{xds, "get", "", "secrets", "", brokerv1.RootCASecret, false},
			{tunnel, "list", g, "clusters", "", "", true},
			{tunnel, "patch", g, "clusters", "", alpha, true},
			{tunnel, "patch", g, "clusters", "status", alpha, true},
			{tunnel, "patch", g, "clusters", "", beta, false},
			{tunnel, "patch", g, "clusters", "status", beta, false},
			{tunnel, "delete", g, "clusters", "", alpha, false},
			{tunnel, "create", g, "exportedservices", "", "", false},
			{tunnel, "create", "discovery.k8s.io", "endpointslices", "", "", false},
			{tunnel, "create", "coordination.k8s.io", "leases", "", "", false},
			{tunnel, "create", "", "serviceaccounts", "token", tunnel, false},
			{agent, "create", "", "serviceaccounts", "token", agent, true},
			{agent, "create", "", "serviceaccounts", "token", xds, true},
			{agent, "create", "", "serviceaccounts", "token", tunnel, true},
			{agent, "create", "", "serviceaccounts", "token", brokerv1.MemberServiceAccount(beta), false},
			{agent, "create", "", "serviceaccounts", "token", brokerv1.XDSServiceAccount(beta), false},
			{agent, "create", g, "exportedservices", "", "", true},
			{agent, "get", "", "secrets", "", brokerv1.RootCASecret, false},
		}
		for _, c := range checks {
			r, err := hub.Kube.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
				User:   user(c.sa),
				Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
				ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: ns, Verb: c.verb, Group: c.group,
					Resource: c.resource, Subresource: c.sub, Name: c.name},
			}}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if r.Status.Allowed != c.allowed {
				t.Errorf("%s %s %s/%s %s: allowed %v, want %v (%s)", c.sa, c.verb, c.resource, c.sub, c.name, r.Status.Allowed, c.allowed, r.Status.Reason)
			}
		}
	})

	// Alpha's record, as its agent publishes it.
	records := hub.Dynamic.Resource(clusterGVR).Namespace(ns)
	if _, err := records.Get(ctx, alpha, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		createOwnCluster(t, asMember(t, a), alpha)
	}

	t.Run("XDSWritesNothing", func(t *testing.T) {
		xds := asRole(t, a, RoleXDS)
		res := xds.Dynamic.Resource(clusterGVR).Namespace(ns)
		if _, err := res.List(ctx, metav1.ListOptions{}); err != nil {
			t.Fatalf("the xDS identity reading the records: %v", err)
		}
		if _, err := xds.Kube.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{}); err != nil {
			t.Fatalf("the xDS identity reading the slices: %v", err)
		}
		_, err := res.Create(ctx, toUnstructured(t, validCluster("xds-made")), dryRunCreate)
		wantForbidden(t, "the xDS identity creating a Cluster", err)
		_, err = res.Patch(ctx, alpha, types.MergePatchType, []byte(`{"spec":{"region":"elsewhere"}}`), metav1.PatchOptions{})
		wantForbidden(t, "the xDS identity patching its cluster's record", err)
		_, err = xds.Dynamic.Resource(sliceGVR).Namespace(ns).Create(ctx, toUnstructured(t, memberSlice(alpha)), dryRunCreate)
		wantForbidden(t, "the xDS identity creating an EndpointSlice", err)
		_, err = xds.Dynamic.Resource(leaseGVR).Namespace(ns).Create(ctx, toUnstructured(t, memberLease(alpha)), dryRunCreate)
		wantForbidden(t, "the xDS identity creating a Lease", err)
		_, err = xds.Kube.CoreV1().ServiceAccounts(ns).CreateToken(ctx, brokerv1.XDSServiceAccount(alpha),
			&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr(int64(600))}}, metav1.CreateOptions{})
		wantForbidden(t, "the xDS identity minting its own token", err)
	})

	t.Run("TunnelWritesOnlyWireGuardAndStatus", func(t *testing.T) {
		tunnel := asRole(t, a, RoleTunnel)
		res := tunnel.Dynamic.Resource(clusterGVR).Namespace(ns)
		apply := func(spec map[string]any, labels map[string]any) error {
			obj := &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": brokerv1.SchemeGroupVersion.String(), "kind": "Cluster",
				"metadata": map[string]any{"name": alpha, "namespace": ns, "labels": labels},
				"spec":     spec,
			}}
			_, err := res.Apply(ctx, alpha, obj, metav1.ApplyOptions{FieldManager: "isthmus-tunnel", Force: true})
			return err
		}
		own := map[string]any{brokerv1.LabelSourceCluster: alpha}
		wg := func(key string) map[string]any {
			return map[string]any{"clusterID": alpha, "wireGuard": map[string]any{"publicKey": key, "endpoint": "192.0.2.11:51820"}}
		}
		// Its job: the WireGuard key and endpoint.
		if err := apply(wg("aTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="), own); err != nil {
			t.Fatalf("the tunnel publishing its WireGuard key: %v", err)
		}
		// Not the pod ranges, which every gateway routes into its tunnel.
		spec := wg("aTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=")
		spec["podCIDRs"] = []any{approved[alpha].pods, "10.99.0.0/16"}
		err := apply(spec, own)
		wantDenied(t, err, "rule tunnel-wireguard-only")
		if !strings.Contains(err.Error(), "spec.podCIDRs") || !strings.Contains(err.Error(), "the agent publishes the rest") {
			t.Errorf("the denial does not name what was refused: %v", err)
		}
		_, err = res.Patch(ctx, alpha, types.MergePatchType, []byte(`{"spec":{"region":"us"}}`), metav1.PatchOptions{})
		wantDenied(t, err, "spec.region")
		_, err = res.Patch(ctx, alpha, types.MergePatchType, []byte(`{"metadata":{"labels":{"team":"x"}}}`), metav1.PatchOptions{})
		wantDenied(t, err, "metadata.labels")
		// Not another cluster's record, and never a delete.
		_, err = res.Patch(ctx, beta, types.MergePatchType, []byte(`{"spec":{"wireGuard":{"publicKey":"aTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=","endpoint":"192.0.2.11:51820"}}}`), metav1.PatchOptions{})
		wantForbidden(t, "the tunnel patching another cluster's record", err)
		wantForbidden(t, "the tunnel deleting its cluster's record", res.Delete(ctx, alpha, metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}}))
		_, err = tunnel.Dynamic.Resource(exportedServiceGVR).Namespace(ns).Create(ctx, toUnstructured(t, validExport(alpha, "demo", "web")), dryRunCreate)
		wantForbidden(t, "the tunnel creating an export", err)

		// The status: its tunnel status and Tunnel* conditions, not the
		// Heartbeat others report.
		status := func(condType string) error {
			obj := &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": brokerv1.SchemeGroupVersion.String(), "kind": "Cluster",
				"metadata": map[string]any{"name": alpha, "namespace": ns},
				"status": map[string]any{
					"tunnel": map[string]any{"implementation": "kernel"},
					"conditions": []any{map[string]any{"type": condType, "status": "True", "reason": "Test", "message": "m",
						"lastTransitionTime": metav1.Now().UTC().Format("2006-01-02T15:04:05Z")}},
				},
			}}
			_, err := res.ApplyStatus(ctx, alpha, obj, metav1.ApplyOptions{FieldManager: "isthmus-tunnel", Force: true})
			return err
		}
		if err := status("TunnelReady"); err != nil {
			t.Fatalf("the tunnel writing its status: %v", err)
		}
		wantDenied(t, status(brokerv1.ClusterConditionHeartbeat), "rule tunnel-status-only")

		// A record the tunnel creates first holds only its key.
		if err := hub.Dynamic.Resource(clusterGVR).Namespace(ns).Delete(ctx, alpha, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = hub.Dynamic.Resource(clusterGVR).Namespace(ns).Delete(context.Background(), alpha, metav1.DeleteOptions{})
		})
		spec = wg("aTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=")
		spec["region"] = "eu"
		wantDenied(t, apply(spec, own), "spec.region")
		if err := apply(wg("aTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="), own); err != nil {
			t.Fatalf("the tunnel creating its record first: %v", err)
		}
	})

	t.Run("AgentMintsOnlyItsClustersTokens", func(t *testing.T) {
		agent := asMember(t, a)
		req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr(int64(600))}}
		for _, role := range BrokerRoles {
			tr, err := agent.Kube.CoreV1().ServiceAccounts(ns).CreateToken(ctx, RoleServiceAccount(role, alpha), req, metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("the agent minting its %s identity's token: %v", role, err)
			}
			if c, _ := parseToken(tr.Status.Token); c.Sub != user(RoleServiceAccount(role, alpha)) {
				t.Errorf("token subject %q", c.Sub)
			}
		}
		_, err := agent.Kube.CoreV1().ServiceAccounts(ns).CreateToken(ctx, brokerv1.TunnelServiceAccount(beta), req, metav1.CreateOptions{})
		wantForbidden(t, "alpha's agent minting beta's tunnel token", err)
	})
}

// TestOwnTokenRuleBehindRBAC (M7): RBAC names the identities a member's
// agent may mint tokens for; should someone grant a member more, the
// broker's own-token-only rule still refuses another member's token.
func TestOwnTokenRuleBehindRBAC(t *testing.T) {
	hub, _, b := joined(t)
	ctx := ctxFor(t)
	ns := brokerv1.DefaultBrokerNamespace
	rbac := hub.Kube.RbacV1()
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "too-broad-tokens", Namespace: ns},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"serviceaccounts/token"}, Verbs: []string{"create"}}}}
	if _, err := rbac.Roles(ns).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rbac.Roles(ns).Delete(context.Background(), role.Name, metav1.DeleteOptions{}) })
	rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "too-broad-tokens", Namespace: ns},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: brokerv1.MemberServiceAccount(beta), Namespace: ns}}}
	if _, err := rbac.RoleBindings(ns).Create(ctx, rb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rbac.RoleBindings(ns).Delete(context.Background(), rb.Name, metav1.DeleteOptions{}) })
	asBeta := asMember(t, b)
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr(int64(600))}}
	eventually(t, "the broad grant taking effect", func() error {
		_, err := asBeta.Kube.CoreV1().ServiceAccounts(ns).CreateToken(ctx, brokerv1.MemberServiceAccount(alpha), req, metav1.CreateOptions{})
		if err == nil {
			t.Fatal("beta minted alpha's token")
		}
		if !strings.Contains(err.Error(), "rule own-token-only") {
			return err
		}
		return nil
	})
}

// TestAgentRenewsEveryRolesToken (M4): the xDS server's and the tunnel's
// stored tokens live ten minutes; the agent's credential renews them (here
// after 2 % of their life) with the agent's identity, each for its own
// ServiceAccount, and the renewed tokens authenticate as the roles.
func TestAgentRenewsEveryRolesToken(t *testing.T) {
	hub, a, _ := joined(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ns := brokerv1.DefaultBrokerNamespace
	first := map[string]string{}
	for _, role := range []string{RoleXDS, RoleTunnel} {
		tr, err := hub.Kube.CoreV1().ServiceAccounts(ns).CreateToken(ctx, RoleServiceAccount(role, alpha), &authenticationv1.TokenRequest{
			Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr(int64(600))}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		first[role] = tr.Status.Token
		storeTokenIn(t, ctx, a, RoleSecret(BrokerSecret, role), tr.Status.Token)
	}
	credential(t, ctx, a, 0.02)
	for _, role := range []string{RoleXDS, RoleTunnel} {
		var renewed string
		for {
			if renewed = storedTokenIn(t, ctx, a, RoleSecret(BrokerSecret, role)); renewed != first[role] {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("the %s token was not renewed", role)
			}
			time.Sleep(time.Second)
		}
		c, _ := parseToken(renewed)
		if c.Exp-c.Iat != 600 {
			t.Errorf("the renewed %s token lives %d s, want 600", role, c.Exp-c.Iat)
		}
		cfg := rest.AnonymousClientConfig(hub.Config)
		cfg.BearerToken = renewed
		kube, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		review, err := kube.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("the renewed %s token: %v", role, err)
		}
		if got, want := review.Status.UserInfo.Username, "system:serviceaccount:"+ns+":"+RoleServiceAccount(role, alpha); got != want {
			t.Errorf("the renewed %s token authenticates as %s, want %s", role, got, want)
		}
	}
}
