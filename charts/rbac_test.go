package charts_test

import (
	"context"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-dev/isthmus/test/helmtest"
)

// access is one question to the authorizer: may the role do this?
type access struct {
	verb, group, resource, sub, ns, name string
	allowed                              bool
}

// roleAccess is, per role, what its code needs (allowed) and a sample of
// what it must not have: the table proves the chart's RBAC both ways.
var roleAccess = map[string][]access{
	"agent": {
		{verb: "list", resource: "services", allowed: true},
		{verb: "watch", resource: "services", ns: "shop", allowed: true},
		{verb: "create", resource: "services", ns: "shop", allowed: true},
		{verb: "patch", resource: "services", ns: "shop", allowed: true},
		{verb: "delete", resource: "services", ns: "shop", allowed: true},
		{verb: "update", resource: "services", ns: "shop"},
		{verb: "list", resource: "namespaces", allowed: true},
		{verb: "delete", resource: "namespaces", name: "shop"},
		{verb: "get", group: "discovery.k8s.io", resource: "endpointslices", ns: "shop", allowed: true},
		{verb: "create", group: "discovery.k8s.io", resource: "endpointslices", ns: "shop", allowed: true},
		{verb: "update", group: "discovery.k8s.io", resource: "endpointslices", ns: "shop", allowed: true},
		{verb: "patch", group: "discovery.k8s.io", resource: "endpointslices", ns: "shop"},
		{verb: "watch", group: "multicluster.x-k8s.io", resource: "serviceexports", allowed: true},
		{verb: "update", group: "multicluster.x-k8s.io", resource: "serviceexports", sub: "status", ns: "shop", allowed: true},
		{verb: "delete", group: "multicluster.x-k8s.io", resource: "serviceexports", ns: "shop"},
		{verb: "update", group: "multicluster.x-k8s.io", resource: "serviceexports", ns: "shop"},
		{verb: "create", group: "multicluster.x-k8s.io", resource: "serviceimports", ns: "shop", allowed: true},
		{verb: "update", group: "multicluster.x-k8s.io", resource: "serviceimports", ns: "shop", allowed: true},
		{verb: "get", group: "multicluster.x-k8s.io", resource: "serviceimports", ns: "shop", allowed: true},
		{verb: "patch", group: "multicluster.x-k8s.io", resource: "serviceimports", ns: "shop"},
		{verb: "update", group: "multicluster.x-k8s.io", resource: "serviceimports", sub: "status", ns: "shop", allowed: true},
		{verb: "create", resource: "events", ns: "shop", allowed: true},
		{verb: "get", group: "about.k8s.io", resource: "clusterproperties", name: "cluster.clusterset.k8s.io", allowed: true},
		{verb: "get", group: "about.k8s.io", resource: "clusterproperties", name: "other"},
		{verb: "update", group: "about.k8s.io", resource: "clusterproperties", name: "cluster.clusterset.k8s.io"},
		{verb: "get", resource: "secrets", ns: "isthmus-system", name: "isthmus-broker", allowed: true},
		// It renews every role's broker token.
		{verb: "update", resource: "secrets", ns: "isthmus-system", name: "isthmus-broker", allowed: true},
		{verb: "update", resource: "secrets", ns: "isthmus-system", name: "isthmus-broker-xds", allowed: true},
		{verb: "update", resource: "secrets", ns: "isthmus-system", name: "isthmus-broker-tunnel", allowed: true},
		{verb: "get", resource: "secrets", ns: "isthmus-system", name: "isthmus-ca"},
		{verb: "get", resource: "secrets", ns: "isthmus-system", name: "isthmus-tunnel-key"},
		{verb: "list", resource: "secrets", ns: "isthmus-system"},
		{verb: "get", resource: "secrets", ns: "shop", name: "isthmus-broker"},
		{verb: "update", resource: "secrets", ns: "shop", name: "isthmus-broker"},
		{verb: "create", group: "coordination.k8s.io", resource: "leases", ns: "isthmus-system", allowed: true},
		{verb: "update", group: "coordination.k8s.io", resource: "leases", ns: "isthmus-system", name: "isthmus-agent", allowed: true},
		{verb: "update", group: "coordination.k8s.io", resource: "leases", ns: "isthmus-system", name: "isthmus-tunnel-c"},
		{verb: "create", group: "coordination.k8s.io", resource: "leases", ns: "shop"},
		{verb: "create", resource: "pods", ns: "shop"},
		{verb: "get", resource: "nodes", name: "kwok-node-0"},
		{verb: "create", group: "authentication.k8s.io", resource: "tokenreviews"},
	},
	"dns": {
		{verb: "list", group: "multicluster.x-k8s.io", resource: "serviceimports", allowed: true},
		{verb: "watch", group: "discovery.k8s.io", resource: "endpointslices", allowed: true},
		{verb: "patch", group: "multicluster.x-k8s.io", resource: "serviceimports", ns: "shop"},
		{verb: "create", group: "discovery.k8s.io", resource: "endpointslices", ns: "shop"},
		{verb: "create", resource: "events", ns: "shop"},
		{verb: "create", group: "coordination.k8s.io", resource: "leases", ns: "isthmus-system"},
		{verb: "get", resource: "secrets", ns: "isthmus-system", name: "isthmus-broker"},
		{verb: "get", resource: "secrets", ns: "isthmus-system", name: "isthmus-ca"},
		{verb: "list", resource: "services"},
		{verb: "get", group: "about.k8s.io", resource: "clusterproperties", name: "cluster.clusterset.k8s.io"},
	},
	"xds": {
		{verb: "watch", group: "multicluster.x-k8s.io", resource: "serviceimports", allowed: true},
		{verb: "list", group: "discovery.k8s.io", resource: "endpointslices", allowed: true},
		{verb: "get", group: "about.k8s.io", resource: "clusterproperties", name: "cluster.clusterset.k8s.io", allowed: true},
		// Its own broker credential, not the agent's or the tunnel's.
		{verb: "get", resource: "secrets", ns: "isthmus-system", name: "isthmus-broker-xds", allowed: true},
		{verb: "get", resource: "secrets", ns: "isthmus-system", name: "isthmus-broker"},
		{verb: "get", resource: "secrets", ns: "isthmus-system", name: "isthmus-broker-tunnel"},
		{verb: "update", resource: "secrets", ns: "isthmus-system", name: "isthmus-broker-xds"},
		{verb: "get", resource: "secrets", ns: "isthmus-system", name: "isthmus-ca", allowed: true},
		{verb: "update", resource: "secrets", ns: "isthmus-system", name: "isthmus-ca"},
		{verb: "update", resource: "secrets", ns: "isthmus-system", name: "isthmus-broker"},
		{verb: "get", resource: "secrets", ns: "isthmus-system", name: "isthmus-tunnel-key"},
		{verb: "list", resource: "secrets", ns: "isthmus-system"},
		{verb: "patch", group: "discovery.k8s.io", resource: "endpointslices", ns: "shop"},
		{verb: "create", group: "coordination.k8s.io", resource: "leases", ns: "isthmus-system"},
		{verb: "create", group: "authentication.k8s.io", resource: "tokenreviews", allowed: true},
		{verb: "create", group: "authorization.k8s.io", resource: "subjectaccessreviews"},
	},
	"tunnel": {
		{verb: "get", resource: "secrets", ns: "isthmus-system", name: "isthmus-tunnel-key", allowed: true},
		// Its own broker credential, not the agent's or the xDS server's.
		{verb: "get", resource: "secrets", ns: "isthmus-system", name: "isthmus-broker-tunnel", allowed: true},
		{verb: "get", resource: "secrets", ns: "isthmus-system", name: "isthmus-broker"},
		{verb: "get", resource: "secrets", ns: "isthmus-system", name: "isthmus-broker-xds"},
		{verb: "create", resource: "secrets", ns: "isthmus-system", allowed: true},
		{verb: "update", resource: "secrets", ns: "isthmus-system", name: "isthmus-tunnel-key"},
		{verb: "update", resource: "secrets", ns: "isthmus-system", name: "isthmus-broker"},
		{verb: "get", resource: "secrets", ns: "isthmus-system", name: "isthmus-ca"},
		{verb: "list", resource: "secrets", ns: "isthmus-system"},
		{verb: "create", resource: "secrets", ns: "shop"},
		{verb: "create", group: "coordination.k8s.io", resource: "leases", ns: "isthmus-system", allowed: true},
		{verb: "update", group: "coordination.k8s.io", resource: "leases", ns: "isthmus-system", name: "isthmus-tunnel-c", allowed: true},
		{verb: "update", group: "coordination.k8s.io", resource: "leases", ns: "isthmus-system", name: "isthmus-agent"},
		{verb: "get", group: "about.k8s.io", resource: "clusterproperties", name: "cluster.clusterset.k8s.io", allowed: true},
		{verb: "list", group: "multicluster.x-k8s.io", resource: "serviceimports"},
		{verb: "get", group: "apps", resource: "daemonsets", ns: "isthmus-system", name: "isthmus-tunnel", allowed: true},
		{verb: "get", group: "apps", resource: "daemonsets", ns: "isthmus-system", name: "isthmus-agent"},
		{verb: "list", group: "apps", resource: "daemonsets", ns: "isthmus-system"},
	},
	"gateway": {
		{verb: "get", resource: "secrets", ns: "isthmus-system", name: "isthmus-ca"},
		{verb: "list", group: "discovery.k8s.io", resource: "endpointslices"},
		{verb: "get", group: "about.k8s.io", resource: "clusterproperties", name: "cluster.clusterset.k8s.io"},
		{verb: "create", group: "authentication.k8s.io", resource: "tokenreviews"},
	},
}

// applyChartRBAC really applies the ServiceAccounts, RBAC and admission
// policies the chart renders in gateway mode (and with the values set) to
// the member, and removes them when the test ends.
func applyChartRBAC(t *testing.T, ctx context.Context, set ...string) {
	t.Helper()
	helmtest.ApplyIdentities(t, ctx, member(t).Config, renderChart(t, append([]string{"dataplane=gateway"}, set...)...))
}

// TestChartRBAC applies the chart's RBAC to a real member and asks the
// apiserver's authorizer, through SubjectAccessReviews, whether each
// role's ServiceAccount may do what its code does, and may not do what it
// does not need; then the same for the one ServiceAccount of mode all,
// which may do what any role may.
func TestChartRBAC(t *testing.T) {
	ctx := ctxFor(t, 2*time.Minute)
	applyChartRBAC(t, ctx)
	anyRole := map[access]bool{} // the question (allowed false) → some role may
	for role, table := range roleAccess {
		for _, a := range table {
			review(t, ctx, "isthmus-"+role, a)
			q := a
			q.allowed = false
			anyRole[q] = anyRole[q] || (a.allowed && role != "gateway")
		}
	}

	// Mode all: the same rules bound to the one ServiceAccount of the
	// `isthmus all` pod, which may do what any role may, and nothing else;
	// the roles' own ServiceAccounts are then bound to nothing.
	applyChartRBAC(t, ctx, "mode=all")
	for q, allowed := range anyRole {
		review(t, ctx, "isthmus-agent", q)
		q.allowed = allowed
		review(t, ctx, "isthmus", q)
	}
}

// review asks the authorizer whether ServiceAccount sa of isthmus-system
// may do a, and fails the test when the answer is not a.allowed.
func review(t *testing.T, ctx context.Context, sa string, a access) {
	t.Helper()
	sar, err := member(t).Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
		Spec: authorizationv1.SubjectAccessReviewSpec{
			User:   "system:serviceaccount:isthmus-system:" + sa,
			Groups: []string{"system:serviceaccounts", "system:serviceaccounts:isthmus-system", "system:authenticated"},
			ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: a.verb, Group: a.group, Resource: a.resource, Subresource: a.sub, Namespace: a.ns, Name: a.name,
			},
		}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if sar.Status.Allowed != a.allowed {
		t.Errorf("%s: %s %s %s/%s in %q named %q: allowed %v, want %v (%s)", sa, a.verb, a.group, a.resource, a.sub, a.ns, a.name,
			sar.Status.Allowed, a.allowed, sar.Status.Reason)
	}
}
