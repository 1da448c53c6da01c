package setup

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

var dryRunCreate = metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}

// waitForAllowlist waits until the allowlist policy judges beta's writes:
// a Cluster record claiming a range outside beta's approved ones is
// refused. The policy and its parameters take a moment to be enforced
// after install and join.
func waitForAllowlist(t *testing.T, asBeta *Clients) {
	t.Helper()
	eventually(t, "the allowlist policy to judge beta's records", func() error {
		c := validCluster(beta)
		c.Spec.PodCIDRs = append(c.Spec.PodCIDRs, "192.0.2.0/24")
		_, err := asBeta.Dynamic.Resource(clusterGVR).Namespace(brokerv1.DefaultBrokerNamespace).Create(context.Background(), toUnstructured(t, c), dryRunCreate)
		if err == nil || !strings.Contains(err.Error(), "rule approved-pod-cidrs") {
			return fmt.Errorf("not yet enforced: %v", err)
		}
		return nil
	})
}

// updateOwnCluster changes beta's own Cluster record with beta's own
// credential, as a compromised member would.
func updateOwnCluster(t *testing.T, asBeta *Clients, mutate func(*brokerv1.ClusterSpec)) error {
	t.Helper()
	res := asBeta.Dynamic.Resource(clusterGVR).Namespace(brokerv1.DefaultBrokerNamespace)
	u, err := res.Get(context.Background(), beta, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var c brokerv1.Cluster
	fromUnstructured(t, u, &c)
	mutate(&c.Spec)
	_, err = res.Update(context.Background(), toUnstructured(t, &c), metav1.UpdateOptions{})
	return err
}

// TestRouteHijackIsDenied replays the route hijack with member beta's own
// broker credential: beta merges a range it was never approved for (a
// documentation range, another member's pod range, a default route, half
// the address space, the link-local range) into its own Cluster record.
// The broker refuses each, naming the rule; ranges within beta's approved
// ones still pass.
func TestRouteHijackIsDenied(t *testing.T) {
	_, _, b := joined(t)
	asBeta := asMember(t, b)
	waitForAllowlist(t, asBeta)
	createOwnCluster(t, asBeta, beta)

	denied := []struct {
		name   string
		mutate func(*brokerv1.ClusterSpec)
		rule   string
	}{
		{"unapproved pod range", func(s *brokerv1.ClusterSpec) { s.PodCIDRs = append(s.PodCIDRs, "192.0.2.0/24") }, "rule approved-pod-cidrs"},
		{"another member's pod range", func(s *brokerv1.ClusterSpec) { s.PodCIDRs = append(s.PodCIDRs, approved[alpha].pods) }, "rule approved-pod-cidrs"},
		{"wider than approved", func(s *brokerv1.ClusterSpec) { s.PodCIDRs = []string{"10.242.0.0/15"} }, "rule approved-pod-cidrs"},
		{"unapproved service range", func(s *brokerv1.ClusterSpec) { s.ServiceCIDRs = append(s.ServiceCIDRs, approved[alpha].svcs) }, "rule approved-service-cidrs"},
		{"pod range claimed as service range", func(s *brokerv1.ClusterSpec) { s.ServiceCIDRs = []string{approved[beta].pods} }, "rule approved-service-cidrs"},
		{"IPv4 default route", func(s *brokerv1.ClusterSpec) { s.PodCIDRs = append(s.PodCIDRs, "0.0.0.0/0") }, "rule sensible-cidrs"},
		{"half of IPv4", func(s *brokerv1.ClusterSpec) { s.PodCIDRs = append(s.PodCIDRs, "128.0.0.0/1") }, "rule sensible-cidrs"},
		{"IPv4 shorter than /8", func(s *brokerv1.ClusterSpec) { s.ServiceCIDRs = append(s.ServiceCIDRs, "10.0.0.0/7") }, "rule sensible-cidrs"},
		{"IPv6 default route", func(s *brokerv1.ClusterSpec) { s.PodCIDRs = append(s.PodCIDRs, "::/0") }, "rule sensible-cidrs"},
		{"IPv6 shorter than /32", func(s *brokerv1.ClusterSpec) { s.PodCIDRs = append(s.PodCIDRs, "2001:db8::/31") }, "rule sensible-cidrs"},
		{"link-local, with the metadata address", func(s *brokerv1.ClusterSpec) { s.PodCIDRs = append(s.PodCIDRs, "169.254.0.0/16") }, "rule sensible-cidrs"},
		{"covering loopback", func(s *brokerv1.ClusterSpec) { s.PodCIDRs = append(s.PodCIDRs, "127.0.0.0/8") }, "rule sensible-cidrs"},
	}
	for _, tt := range denied {
		t.Run(tt.name, func(t *testing.T) {
			err := updateOwnCluster(t, asBeta, tt.mutate)
			wantDenied(t, err, tt.rule)
			if !strings.Contains(err.Error(), "member 'beta'") {
				t.Errorf("message does not name the member: %v", err)
			}
		})
	}
	t.Run("message names the refused range and the approved ones", func(t *testing.T) {
		err := updateOwnCluster(t, asBeta, func(s *brokerv1.ClusterSpec) { s.PodCIDRs = append(s.PodCIDRs, "192.0.2.0/24") })
		wantErrContaining(t, err, "claims 192.0.2.0/24 in spec.podCIDRs", "approved for it ("+approved[beta].pods+")", "isthmusctl join --pod-cidrs")
	})
	t.Run("approved ranges and ranges within them pass", func(t *testing.T) {
		if err := updateOwnCluster(t, asBeta, func(s *brokerv1.ClusterSpec) {
			s.PodCIDRs = []string{"10.242.0.0/17", "10.242.128.0/17"}
			s.ServiceCIDRs = []string{approved[beta].svcs}
		}); err != nil {
			t.Fatalf("beta publishing ranges within its approved ones: %v", err)
		}
	})
	t.Run("a peer's heartbeat still passes", func(t *testing.T) {
		// Alpha reports beta's heartbeat; beta's record is judged by
		// beta's allowlist only when beta writes it.
		asAlpha := asMember(t, clients(t, clusters.Members[0]))
		res := asAlpha.Dynamic.Resource(clusterGVR).Namespace(brokerv1.DefaultBrokerNamespace)
		u, err := res.Get(context.Background(), beta, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cond := map[string]any{"type": brokerv1.ClusterConditionHeartbeat, "status": "True", "reason": brokerv1.ReasonLeaseRenewed,
			"message": "seen by alpha", "lastTransitionTime": time.Now().UTC().Format(time.RFC3339)}
		if err := unstructured.SetNestedSlice(u.Object, []any{cond}, "status", "conditions"); err != nil {
			t.Fatal(err)
		}
		if _, err := res.UpdateStatus(context.Background(), u, metav1.UpdateOptions{}); err != nil {
			t.Errorf("alpha reporting beta's heartbeat: %v", err)
		}
	})
}

// TestUniversalCIDRRulesHoldWithoutAllowlist removes the approved ranges
// from beta's MemberPolicy, as for a member joined without --pod-cidrs:
// beta may then claim any sensible range, but still no default route, no
// short prefix and no reserved range.
func TestUniversalCIDRRulesHoldWithoutAllowlist(t *testing.T) {
	hub, _, b := joined(t)
	ctx := ctxFor(t)
	asBeta := asMember(t, b)
	waitForAllowlist(t, asBeta)
	policies := hub.Dynamic.Resource(memberPolicyGVR).Namespace(brokerv1.DefaultBrokerNamespace)
	if _, err := policies.Patch(ctx, beta, types.JSONPatchType, []byte(`[{"op":"remove","path":"/spec/cidrs"}]`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// As the hub admin would: join again with the ranges.
		var out bytes.Buffer
		if _, err := Join(context.Background(), hub, b, JoinOptions{
			PodCIDRs: []string{approved[beta].pods}, ServiceCIDRs: []string{approved[beta].svcs}, ExportNamespaces: []string{"demo"},
		}, &out); err != nil {
			t.Errorf("restoring beta's approved ranges: %v", err)
			return
		}
		waitForAllowlist(t, asBeta)
	})

	res := asBeta.Dynamic.Resource(clusterGVR).Namespace(brokerv1.DefaultBrokerNamespace)
	claim := func(cidr string) error {
		c := validCluster(beta)
		c.Spec.PodCIDRs = append(c.Spec.PodCIDRs, cidr)
		_, err := res.Create(ctx, toUnstructured(t, c), dryRunCreate)
		return err
	}
	eventually(t, "beta's allowlist to be lifted", func() error { return claim("192.0.2.0/24") })
	for _, cidr := range []string{"0.0.0.0/0", "0.0.0.0/1", "::/0", "10.0.0.0/7", "169.254.169.0/24"} {
		wantDenied(t, claim(cidr), "rule sensible-cidrs")
	}
}

// TestEndpointInjectionIsDenied replays the endpoint injection with beta's
// own credential: beta adds addresses outside its approved pod ranges to
// its own broker EndpointSlice. The broker refuses each, naming the rule;
// beta's own pod addresses still pass.
func TestEndpointInjectionIsDenied(t *testing.T) {
	_, _, b := joined(t)
	ctx := ctxFor(t)
	asBeta := asMember(t, b)
	waitForAllowlist(t, asBeta)
	res := asBeta.Dynamic.Resource(sliceGVR).Namespace(brokerv1.DefaultBrokerNamespace)
	own, err := res.Create(ctx, toUnstructured(t, memberSlice(beta)), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("beta creating its own slice: %v", err)
	}
	t.Cleanup(func() { _ = res.Delete(context.Background(), own.GetName(), metav1.DeleteOptions{}) })

	withAddresses := func(addrs ...string) error {
		cur, err := res.Get(ctx, own.GetName(), metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var s discoveryv1.EndpointSlice
		fromUnstructured(t, cur, &s)
		ready := true
		for _, a := range addrs {
			s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}})
		}
		_, err = res.Update(ctx, toUnstructured(t, &s), metav1.UpdateOptions{})
		return err
	}
	for _, tt := range []struct{ name, addr, rule string }{
		{"an address in no range beta claims", "198.51.100.7", "rule endpoints-in-pod-cidrs"},
		{"an address in another member's pod range", "10.241.0.9", "rule endpoints-in-pod-cidrs"},
		{"an address in beta's service range", "10.98.0.10", "rule endpoints-in-pod-cidrs"},
		// The EndpointSlice API itself refuses loopback and link-local
		// addresses (the metadata address among them); multicast and the
		// broadcast address get as far as admission.
		{"a multicast address", "239.1.2.3", "rule endpoint-addresses"},
		{"the broadcast address", "255.255.255.255", "rule endpoint-addresses"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := withAddresses(tt.addr)
			wantDenied(t, err, tt.rule)
			if !strings.Contains(err.Error(), tt.addr) {
				t.Errorf("message does not name the refused address %s: %v", tt.addr, err)
			}
		})
	}
	t.Run("FQDN slice", func(t *testing.T) {
		s := memberSlice(beta)
		s.Name += "-fqdn"
		s.AddressType = discoveryv1.AddressTypeFQDN
		s.Endpoints[0].Addresses = []string{"evil.example.com"}
		_, err := res.Create(ctx, toUnstructured(t, s), dryRunCreate)
		wantDenied(t, err, "rule endpoint-addresses")
	})
	t.Run("more endpoints than the limit", func(t *testing.T) {
		var addrs []string
		for i := range brokerv1.DefaultMaxEndpointsPerSlice {
			addrs = append(addrs, fmt.Sprintf("10.242.1.%d", i+1))
		}
		wantDenied(t, withAddresses(addrs...), "rule max-endpoints-per-slice")
	})
	t.Run("beta's own pod addresses pass", func(t *testing.T) {
		if err := withAddresses("10.242.7.1", "10.242.255.254"); err != nil {
			t.Fatalf("beta publishing its own pod addresses: %v", err)
		}
	})
	t.Run("a slice with no endpoints passes", func(t *testing.T) {
		// A Service scaled to zero: the agent publishes endpoints: null,
		// which every rule must read as no endpoints, not as an error.
		cur, err := res.Get(ctx, own.GetName(), metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var s discoveryv1.EndpointSlice
		fromUnstructured(t, cur, &s)
		s.Endpoints = nil
		if _, err := res.Update(ctx, toUnstructured(t, &s), metav1.UpdateOptions{}); err != nil {
			t.Fatalf("beta publishing an empty slice: %v", err)
		}
	})
}

// TestExportNamespacesAndSizeLimits checks the rest of beta's MemberPolicy
// with its own credential: it may export only from the namespace it was
// approved for (demo), and its records' labels and annotations are capped.
func TestExportNamespacesAndSizeLimits(t *testing.T) {
	_, _, b := joined(t)
	ctx := ctxFor(t)
	asBeta := asMember(t, b)
	waitForAllowlist(t, asBeta)
	exports := asBeta.Dynamic.Resource(exportedServiceGVR).Namespace(brokerv1.DefaultBrokerNamespace)
	slices := asBeta.Dynamic.Resource(sliceGVR).Namespace(brokerv1.DefaultBrokerNamespace)

	_, err := exports.Create(ctx, toUnstructured(t, validExport(beta, "kube-system", "api")), dryRunCreate)
	wantDenied(t, err, "rule export-namespaces")
	wantErrContaining(t, err, "only from namespaces demo, not from 'kube-system'")
	s := memberSlice(beta)
	s.Labels[brokerv1.LabelServiceNamespace] = "kube-system"
	_, err = slices.Create(ctx, toUnstructured(t, s), dryRunCreate)
	wantDenied(t, err, "rule export-namespaces")
	if _, err := exports.Create(ctx, toUnstructured(t, validExport(beta, "demo", "api")), dryRunCreate); err != nil {
		t.Errorf("beta exporting from its approved namespace: %v", err)
	}

	big := strings.Repeat("x", brokerv1.DefaultMaxMetadataBytes)
	e := validExport(beta, "demo", "api")
	e.Spec.ExportedAnnotations = map[string]string{"example.com/huge": big}
	_, err = exports.Create(ctx, toUnstructured(t, e), dryRunCreate)
	wantDenied(t, err, "rule max-metadata-bytes")
	wantErrContaining(t, err, "exportedLabels and exportedAnnotations")

	c := validCluster(beta)
	c.Annotations = map[string]string{"example.com/huge": big}
	_, err = asBeta.Dynamic.Resource(clusterGVR).Namespace(brokerv1.DefaultBrokerNamespace).Create(ctx, toUnstructured(t, c), dryRunCreate)
	wantDenied(t, err, "rule max-metadata-bytes")

	s = memberSlice(beta)
	s.Annotations = map[string]string{"example.com/huge": big}
	_, err = slices.Create(ctx, toUnstructured(t, s), dryRunCreate)
	wantDenied(t, err, "rule max-metadata-bytes")

	// A Lease is capped by the member policy, at the default whatever the
	// MemberPolicy says (the allowlist does not match Leases).
	l := memberLease(beta)
	l.Annotations = map[string]string{"example.com/huge": big}
	_, err = asBeta.Dynamic.Resource(leaseGVR).Namespace(brokerv1.DefaultBrokerNamespace).Create(ctx, toUnstructured(t, l), dryRunCreate)
	wantDenied(t, err, "rule lease-metadata-bytes")
	l.Annotations = map[string]string{"example.com/fits": strings.Repeat("x", 1024)}
	if _, err := asBeta.Dynamic.Resource(leaseGVR).Namespace(brokerv1.DefaultBrokerNamespace).Create(ctx, toUnstructured(t, l), dryRunCreate); err != nil {
		t.Errorf("beta writing a Lease within the limit: %v", err)
	}

	c = validCluster(beta)
	c.Annotations = map[string]string{"example.com/fits": strings.Repeat("x", 1024)}
	if _, err := asBeta.Dynamic.Resource(clusterGVR).Namespace(brokerv1.DefaultBrokerNamespace).Create(ctx, toUnstructured(t, c), dryRunCreate); err != nil {
		t.Errorf("beta writing a record within the limits: %v", err)
	}
}

// TestMemberCannotWriteItsAllowlist checks that join recorded beta's
// approved ranges in a MemberPolicy on the hub, that neither beta nor
// alpha can read, change, delete or add to any MemberPolicy with its own
// credential, and that joining again without the flags keeps the ranges.
func TestMemberCannotWriteItsAllowlist(t *testing.T) {
	hub, a, b := joined(t)
	ctx := ctxFor(t)
	ns := brokerv1.DefaultBrokerNamespace
	got, err := hub.Dynamic.Resource(memberPolicyGVR).Namespace(ns).Get(ctx, beta, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("beta's MemberPolicy: %v", err)
	}
	var mp brokerv1.MemberPolicy
	fromUnstructured(t, got, &mp)
	if mp.Spec.CIDRs == nil || strings.Join(mp.Spec.CIDRs.PodCIDRs, ",") != approved[beta].pods ||
		strings.Join(mp.Spec.CIDRs.ServiceCIDRs, ",") != approved[beta].svcs || strings.Join(mp.Spec.ExportNamespaces, ",") != "demo" {
		t.Fatalf("beta's MemberPolicy holds %+v, want the ranges and namespace join was given", mp.Spec)
	}

	for name, m := range map[string]*Clients{alpha: asMember(t, a), beta: asMember(t, b)} {
		res := m.Dynamic.Resource(memberPolicyGVR).Namespace(ns)
		widened := got.DeepCopy()
		_ = unstructured.SetNestedStringSlice(widened.Object, []string{"0.0.0.0/1"}, "spec", "cidrs", "podCIDRs")
		fresh := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": brokerv1.SchemeGroupVersion.String(), "kind": "MemberPolicy",
			"metadata": map[string]any{"name": name + "-2", "namespace": ns},
			"spec":     map[string]any{},
		}}
		// Writes are dry runs: authorization comes first all the same, and
		// a regression cannot take beta's allowlist away from later tests.
		dry := []string{metav1.DryRunAll}
		for what, err := range map[string]error{
			"reading":  func() error { _, err := res.Get(ctx, beta, metav1.GetOptions{}); return err }(),
			"listing":  func() error { _, err := res.List(ctx, metav1.ListOptions{}); return err }(),
			"updating": func() error { _, err := res.Update(ctx, widened, metav1.UpdateOptions{DryRun: dry}); return err }(),
			"patching": func() error {
				_, err := res.Patch(ctx, beta, types.MergePatchType, []byte(`{"spec":{"cidrs":null}}`), metav1.PatchOptions{DryRun: dry})
				return err
			}(),
			"deleting": res.Delete(ctx, beta, metav1.DeleteOptions{DryRun: dry}),
			"creating": func() error { _, err := res.Create(ctx, fresh, metav1.CreateOptions{DryRun: dry}); return err }(),
		} {
			if !apierrors.IsForbidden(err) {
				t.Errorf("%s %s a MemberPolicy: %v, want Forbidden", name, what, err)
			}
		}
	}

	// Joining again without the flags keeps what was approved.
	var out bytes.Buffer
	if _, err := Join(ctx, hub, b, JoinOptions{}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "memberpolicies.broker.isthmus.dev/beta unchanged") || strings.Contains(out.String(), "warning") {
		t.Errorf("a second join without --pod-cidrs changed beta's MemberPolicy:\n%s", out.String())
	}
}

func fromUnstructured(t *testing.T, u *unstructured.Unstructured, into any) {
	t.Helper()
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, into); err != nil {
		t.Fatal(err)
	}
}

// TestAllowlistBindsEachMemberByName upgrades a broker whose allowlist was
// bound the old way: beta's own binding is gone and a single binding hands
// the policy every MemberPolicy (a paramRef selector), which made each
// write cost one evaluation per member. Without its own binding beta is
// judged by nothing but that old binding; install again replaces it with
// one binding per MemberPolicy, naming it, and beta is judged by its own.
func TestAllowlistBindsEachMemberByName(t *testing.T) {
	hub, _, b := joined(t)
	ctx := ctxFor(t)
	ns := brokerv1.DefaultBrokerNamespace
	asBeta := asMember(t, b)
	waitForAllowlist(t, asBeta)
	bindings := hub.Dynamic.Resource(policyBindingGVR)

	for _, id := range []string{alpha, beta} {
		u, err := bindings.Get(ctx, AllowlistBindingName(ns, id), metav1.GetOptions{})
		if err != nil {
			t.Fatalf("%s's allowlist binding after join: %v", id, err)
		}
		var got admissionv1.ValidatingAdmissionPolicyBinding
		fromUnstructured(t, u, &got)
		if p := got.Spec.ParamRef; p == nil || p.Name != id || p.Selector != nil || got.Spec.MatchResources == nil ||
			got.Spec.MatchResources.ObjectSelector == nil || got.Spec.MatchResources.ObjectSelector.MatchLabels[brokerv1.LabelSourceCluster] != id {
			t.Errorf("%s's binding: paramRef %+v, matchResources %+v; want its MemberPolicy by name for the records labelled with its id", id, p, got.Spec.MatchResources)
		}
	}

	// The old shape, as an earlier install left it.
	if err := bindings.Delete(ctx, AllowlistBindingName(ns, beta), metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	allow := admissionv1.AllowAction
	shared := &admissionv1.ValidatingAdmissionPolicyBinding{
		TypeMeta:   metav1.TypeMeta{APIVersion: admissionv1.SchemeGroupVersion.String(), Kind: "ValidatingAdmissionPolicyBinding"},
		ObjectMeta: metav1.ObjectMeta{Name: AllowlistPolicyName(ns)},
		Spec: admissionv1.ValidatingAdmissionPolicyBindingSpec{
			PolicyName:        AllowlistPolicyName(ns),
			ParamRef:          &admissionv1.ParamRef{Namespace: ns, Selector: &metav1.LabelSelector{}, ParameterNotFoundAction: &allow},
			ValidationActions: []admissionv1.ValidationAction{admissionv1.Deny},
		},
	}
	if _, err := bindings.Create(ctx, toUnstructured(t, shared), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Judged through the shared binding alone.
	waitForAllowlist(t, asBeta)

	var out bytes.Buffer
	if err := InstallBroker(ctx, hub, BrokerOptions{}, &out); err != nil {
		t.Fatal(err)
	}
	if _, err := bindings.Get(ctx, AllowlistPolicyName(ns), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the shared binding after install: %v, want it deleted\n%s", err, out.String())
	}
	if _, err := bindings.Get(ctx, AllowlistBindingName(ns, beta), metav1.GetOptions{}); err != nil {
		t.Errorf("beta's binding after install: %v\n%s", err, out.String())
	}
	waitForAllowlist(t, asBeta)

	// And it is beta's own binding that judges it: without it, beta is
	// held to the universal rules alone.
	if err := bindings.Delete(ctx, AllowlistBindingName(ns, beta), metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := bindings.Create(context.Background(), toUnstructured(t, memberAllowlistBinding(ns, beta)), metav1.CreateOptions{}); err != nil {
			t.Errorf("restoring beta's binding: %v", err)
		}
		waitForAllowlist(t, asBeta)
	})
	eventually(t, "beta unjudged without its binding", func() error {
		c := validCluster(beta)
		c.Spec.PodCIDRs = append(c.Spec.PodCIDRs, "192.0.2.0/24")
		_, err := asBeta.Dynamic.Resource(clusterGVR).Namespace(ns).Create(ctx, toUnstructured(t, c), dryRunCreate)
		return err
	})
}
