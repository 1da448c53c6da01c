package charts_test

import (
	"context"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// TestChartAgentWritePolicy: the agent's RBAC lets it write Services and
// EndpointSlices in every namespace; the chart's admission policy narrows
// that to its own derived objects. With a real token of the agent's chart
// ServiceAccount, against the real apiserver: what the agent writes is
// allowed, and taking over a user's Service, feeding it endpoints, or
// opening a LoadBalancer is denied with a message naming the rule.
func TestChartAgentWritePolicy(t *testing.T) {
	ctx := ctxFor(t, 2*time.Minute)
	m := member(t)
	applyChartRBAC(t, ctx)

	ns := "agentpolicy"
	if _, err := m.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Client.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) })
	// A user's Service and its own slice, written by the admin.
	user := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"}, Ports: []corev1.ServicePort{{Port: 80}}}}
	if _, err := m.Client.CoreV1().Services(ns).Create(ctx, user, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Client.DiscoveryV1().EndpointSlices(ns).Create(ctx, slice("web-user", "web", false), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	tok, err := m.Client.CoreV1().ServiceAccounts("isthmus-system").CreateToken(ctx, "isthmus-agent",
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptrTo(int64(600))}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := rest.AnonymousClientConfig(m.Config)
	cfg.BearerToken = tok.Status.Token
	agent := kubernetes.NewForConfigOrDie(cfg)
	svcs, slices := agent.CoreV1().Services(ns), agent.DiscoveryV1().EndpointSlices(ns)

	// The policy takes a moment to be enforced after it is created: wait
	// for a dry run of a forbidden write to be denied, then ask for real.
	untilEnforced(t, "the agent's write policy", func() error {
		_, err := svcs.Create(ctx, derived("web2", "ClusterIP"), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		return err
	})
	takeOver := func() error {
		_, err := svcs.Patch(ctx, "web", types.MergePatchType,
			[]byte(`{"metadata":{"labels":{"endpointslice.kubernetes.io/managed-by":"isthmus.dev"}}}`), metav1.PatchOptions{})
		return err
	}
	denied(t, "labelling a user's Service as the agent's", "agent-owns-what-it-writes", takeOver())
	denied(t, "deleting a user's Service", "agent-owns-what-it-writes", svcs.Delete(ctx, "web", metav1.DeleteOptions{}))
	denied(t, "deleting a user's EndpointSlice", "agent-owns-what-it-writes", slices.Delete(ctx, "web-user", metav1.DeleteOptions{}))

	_, err = svcs.Create(ctx, derived("web2", "ClusterIP"), metav1.CreateOptions{})
	denied(t, "a Service not named as a derived one", "agent-derived-services", err)
	_, err = svcs.Create(ctx, derived("derived-0123456789", "LoadBalancer"), metav1.CreateOptions{})
	denied(t, "a LoadBalancer", "agent-derived-services", err)
	withIPs := derived("derived-0123456789", "ClusterIP")
	withIPs.Spec.ExternalIPs = []string{"192.0.2.10"}
	_, err = svcs.Create(ctx, withIPs, metav1.CreateOptions{})
	denied(t, "external IPs", "agent-derived-services", err)
	withSelector := derived("derived-0123456789", "ClusterIP")
	withSelector.Spec.Selector = map[string]string{"app": "web"}
	_, err = svcs.Create(ctx, withSelector, metav1.CreateOptions{})
	denied(t, "a selector", "agent-derived-services", err)
	_, err = slices.Create(ctx, slice("web-injected", "web", true), metav1.CreateOptions{})
	denied(t, "an EndpointSlice feeding a user's Service", "agent-slices-feed-derived-services", err)

	// What the agent really writes passes: a derived Service, its slice,
	// an MCS slice (no service-name label), and their deletion.
	if _, err := svcs.Create(ctx, derived("derived-0123456789", "ClusterIP"), metav1.CreateOptions{}); err != nil {
		t.Errorf("a derived Service: %v", err)
	}
	if _, err := slices.Create(ctx, slice("derived-0123456789-a-ipv4", "derived-0123456789", true), metav1.CreateOptions{}); err != nil {
		t.Errorf("a derived Service's slice: %v", err)
	}
	mcs := slice("web-a-ipv4", "", true)
	mcs.Labels["multicluster.kubernetes.io/service-name"] = "web"
	if _, err := slices.Create(ctx, mcs, metav1.CreateOptions{}); err != nil {
		t.Errorf("an MCS slice: %v", err)
	}
	if err := slices.Delete(ctx, "derived-0123456789-a-ipv4", metav1.DeleteOptions{}); err != nil {
		t.Errorf("deleting its slice: %v", err)
	}
	if err := svcs.Delete(ctx, "derived-0123456789", metav1.DeleteOptions{}); err != nil {
		t.Errorf("deleting its derived Service: %v", err)
	}
}

// TestChartTunnelSecretPolicy: the tunnel may create Secrets (its key,
// when there is none), and RBAC cannot limit that to one name; the chart's
// policy does. With a real token of the tunnel's chart ServiceAccount: its
// key Secret may be created, any other name or a token-type Secret not.
func TestChartTunnelSecretPolicy(t *testing.T) {
	ctx := ctxFor(t, 2*time.Minute)
	m := member(t)
	applyChartRBAC(t, ctx)
	tok, err := m.Client.CoreV1().ServiceAccounts("isthmus-system").CreateToken(ctx, "isthmus-tunnel",
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptrTo(int64(600))}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := rest.AnonymousClientConfig(m.Config)
	cfg.BearerToken = tok.Status.Token
	secrets := kubernetes.NewForConfigOrDie(cfg).CoreV1().Secrets("isthmus-system")
	dry := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	secret := func(name string, typ corev1.SecretType) *corev1.Secret {
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name}, Type: typ, Data: map[string][]byte{"k": []byte("v")}}
		if typ == corev1.SecretTypeServiceAccountToken {
			s.Annotations = map[string]string{corev1.ServiceAccountNameKey: "isthmus-agent"}
			s.Data = nil
		}
		return s
	}
	err = untilEnforced(t, "the tunnel's secret policy", func() error {
		_, err := secrets.Create(ctx, secret("other", corev1.SecretTypeOpaque), dry)
		return err
	})
	denied(t, "another Secret's name", "tunnel-creates-only-its-key", err)
	_, err = secrets.Create(ctx, secret("isthmus-tunnel-key", corev1.SecretTypeServiceAccountToken), dry)
	denied(t, "a token Secret under the key's name", "tunnel-creates-only-its-key", err)
	if _, err := secrets.Create(ctx, secret("isthmus-tunnel-key", corev1.SecretTypeOpaque), dry); err != nil {
		t.Errorf("the tunnel's own key Secret: %v", err)
	}
}

// denied fails the test unless err is a Forbidden naming rule.
func denied(t *testing.T, what, rule string, err error) {
	t.Helper()
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "rule "+rule+":") {
		t.Errorf("%s: got %v, want Forbidden by rule %s", what, err, rule)
	}
}

// untilEnforced retries try, a write the policy forbids, until the
// apiserver denies it (a new policy takes a moment to be enforced), and
// returns that denial; after 30 s it fails the test.
func untilEnforced(t *testing.T, policy string, try func() error) error {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := try()
		if apierrors.IsForbidden(err) {
			return err
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s is not enforced after 30 s: a write it forbids gave %v", policy, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// derived is a Service as the agent derives it, named name, of type typ.
func derived(name, typ string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
			"endpointslice.kubernetes.io/managed-by": "isthmus.dev", "isthmus.dev/derived-for": "web"}},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceType(typ), Ports: []corev1.ServicePort{{Port: 80}}},
	}
}

// slice is an EndpointSlice feeding service (none when empty), labelled as
// the agent's when ours.
func slice(name, service string, ours bool) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Labels: map[string]string{}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.244.0.9"}}},
	}
	if service != "" {
		s.Labels[discoveryv1.LabelServiceName] = service
	}
	if ours {
		s.Labels[discoveryv1.LabelManagedBy] = "isthmus.dev"
	}
	return s
}
