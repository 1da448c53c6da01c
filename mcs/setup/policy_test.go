package setup

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

var (
	sliceGVR = discoveryv1.SchemeGroupVersion.WithResource("endpointslices")
	leaseGVR = coordinationv1.SchemeGroupVersion.WithResource("leases")
)

// asMember returns broker clients that act with the credentials join wrote
// into the member's Secret, exactly as its agent will.
func asMember(t *testing.T, member *Clients) *Clients {
	t.Helper()
	return asRole(t, member, RoleAgent)
}

func memberSlice(cluster string) *discoveryv1.EndpointSlice {
	ready := true
	port, name, proto := int32(8080), "http", corev1.ProtocolTCP
	return &discoveryv1.EndpointSlice{
		TypeMeta: metav1.TypeMeta{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice"},
		ObjectMeta: metav1.ObjectMeta{Name: "web-demo-" + cluster + "-ipv4", Namespace: brokerv1.DefaultBrokerNamespace, Labels: map[string]string{
			brokerv1.LabelSourceCluster: cluster, brokerv1.LabelServiceName: "web",
			brokerv1.LabelServiceNamespace: "demo", brokerv1.LabelManagedBy: brokerv1.ManagedBy,
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{approved[cluster].podIP}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}},
	}
}

func memberLease(cluster string) *coordinationv1.Lease {
	holder, secs := cluster, int32(30)
	return &coordinationv1.Lease{
		TypeMeta: metav1.TypeMeta{APIVersion: "coordination.k8s.io/v1", Kind: "Lease"},
		ObjectMeta: metav1.ObjectMeta{Name: brokerv1.LeaseName(cluster), Namespace: brokerv1.DefaultBrokerNamespace,
			Labels: map[string]string{brokerv1.LabelSourceCluster: cluster}},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &secs, RenewTime: &metav1.MicroTime{Time: time.Now()}},
	}
}

func wantDenied(t *testing.T, err error, rule string) {
	t.Helper()
	if err == nil {
		t.Fatalf("allowed, want denied by %s", rule)
	}
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), rule) {
		t.Fatalf("want Forbidden naming %q, got: %v", rule, err)
	}
}

// TestMembersWriteOnlyTheirOwnRecords checks the broker's least privilege
// with the members' real credentials: alpha manages its own Cluster,
// ExportedService, EndpointSlice and Lease; beta can neither create records
// in alpha's name nor change or delete alpha's; neither can read Secrets,
// write outside the broker namespace, or mint another member's token.
// Every denial by the admission policy names the rule that denied it.
func TestMembersWriteOnlyTheirOwnRecords(t *testing.T) {
	_, a, b := joined(t)
	ctx := ctxFor(t)
	asAlpha, asBeta := asMember(t, a), asMember(t, b)
	ns := brokerv1.DefaultBrokerNamespace
	dryRun := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}

	kinds := []struct {
		name string
		gvr  schema.GroupVersionResource
		make func(cluster string) *unstructured.Unstructured
		// impostor is a record labelled as beta's that names alpha in its
		// own cluster field; nil where the label is the only owner field.
		impostor func() *unstructured.Unstructured
	}{
		{"Cluster", clusterGVR,
			func(c string) *unstructured.Unstructured { return toUnstructured(t, validCluster(c)) },
			func() *unstructured.Unstructured {
				c := validCluster(alpha)
				c.Labels[brokerv1.LabelSourceCluster] = beta
				return toUnstructured(t, c)
			}},
		{"ExportedService", exportedServiceGVR,
			func(c string) *unstructured.Unstructured { return toUnstructured(t, validExport(c, "demo", "web")) },
			func() *unstructured.Unstructured {
				e := validExport(alpha, "demo", "web")
				e.Labels[brokerv1.LabelSourceCluster] = beta
				return toUnstructured(t, e)
			}},
		{"EndpointSlice", sliceGVR,
			func(c string) *unstructured.Unstructured { return toUnstructured(t, memberSlice(c)) }, nil},
		{"Lease", leaseGVR,
			func(c string) *unstructured.Unstructured { return toUnstructured(t, memberLease(c)) },
			func() *unstructured.Unstructured {
				l := memberLease(alpha)
				l.Labels[brokerv1.LabelSourceCluster] = beta
				return toUnstructured(t, l)
			}},
	}
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			alphaRes := asAlpha.Dynamic.Resource(k.gvr).Namespace(ns)
			betaRes := asBeta.Dynamic.Resource(k.gvr).Namespace(ns)

			// The policy is enforced a moment after it is written.
			eventually(t, "beta creating a record in alpha's name", func() error {
				_, err := betaRes.Create(ctx, k.make(alpha), dryRun)
				if err == nil {
					return errString("allowed")
				}
				return nil
			})
			_, err := betaRes.Create(ctx, k.make(alpha), dryRun)
			wantDenied(t, err, "rule own-records-only")
			if k.impostor != nil {
				_, err := betaRes.Create(ctx, k.impostor(), dryRun)
				wantDenied(t, err, "rule own-records-only")
			}

			own, err := alphaRes.Create(ctx, k.make(alpha), metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("alpha creating its own %s: %v", k.name, err)
			}
			// Beta sees alpha's records (importers read every member's)...
			seen, err := betaRes.Get(ctx, own.GetName(), metav1.GetOptions{})
			if err != nil {
				t.Fatalf("beta reading alpha's %s: %v", k.name, err)
			}
			// ...but may not change them, not even by relabelling them as its own...
			changed := seen.DeepCopy()
			changed.SetAnnotations(map[string]string{"tampered": "yes"})
			_, err = betaRes.Update(ctx, changed, metav1.UpdateOptions{})
			wantDenied(t, err, "rule ")
			if k.name == "EndpointSlice" {
				stolen := seen.DeepCopy()
				labels := stolen.GetLabels()
				labels[brokerv1.LabelSourceCluster] = beta
				stolen.SetLabels(labels)
				_, err = betaRes.Update(ctx, stolen, metav1.UpdateOptions{})
				wantDenied(t, err, "rule existing-records-of-others")
			}
			// ...nor delete them.
			err = betaRes.Delete(ctx, own.GetName(), metav1.DeleteOptions{})
			wantDenied(t, err, "rule existing-records-of-others")

			// Alpha manages its own.
			mine := own.DeepCopy()
			mine.SetAnnotations(map[string]string{"touched": "by-alpha"})
			if _, err := alphaRes.Update(ctx, mine, metav1.UpdateOptions{}); err != nil {
				t.Fatalf("alpha updating its own %s: %v", k.name, err)
			}
			if err := alphaRes.Delete(ctx, own.GetName(), metav1.DeleteOptions{}); err != nil {
				t.Fatalf("alpha deleting its own %s: %v", k.name, err)
			}
			// Beta's own records are beta's business.
			if _, err := betaRes.Create(ctx, k.make(beta), dryRun); err != nil {
				t.Fatalf("beta creating its own %s: %v", k.name, err)
			}
		})
	}

	res := func(c *Clients) dynamicResource {
		return c.Dynamic.Resource(clusterGVR).Namespace(ns)
	}
	t.Run("PeerHeartbeat", func(t *testing.T) {
		// Beta may report alpha's heartbeat, and only that, in alpha's
		// Cluster status.
		createOwnCluster(t, asAlpha, alpha)
		setCondition := func(typ string) error {
			u, err := res(asBeta).Get(ctx, alpha, metav1.GetOptions{})
			if err != nil {
				return err
			}
			cond := map[string]any{"type": typ, "status": "False", "reason": "LeaseExpired", "message": "seen by beta",
				"lastTransitionTime": time.Now().UTC().Format(time.RFC3339)}
			if err := unstructured.SetNestedSlice(u.Object, []any{cond}, "status", "conditions"); err != nil {
				return err
			}
			_, err = res(asBeta).UpdateStatus(ctx, u, metav1.UpdateOptions{})
			return err
		}
		if err := setCondition(brokerv1.ClusterConditionHeartbeat); err != nil {
			t.Errorf("beta reporting alpha's heartbeat: %v", err)
		}
		wantDenied(t, setCondition("Ready"), "rule own-records-only")
	})

	t.Run("TunnelStatus", func(t *testing.T) {
		// Alpha's tunnel writes status.tunnel on alpha's record with
		// server-side apply under its own field manager; beta may still
		// report alpha's heartbeat there, but may neither change nor
		// remove alpha's tunnel status, alone or along with a heartbeat.
		createOwnCluster(t, asAlpha, alpha)
		tunnel := func(state string) map[string]any {
			return map[string]any{"implementation": "userspace", "offload": true, "keyGeneration": int64(2),
				"peers": []any{map[string]any{"cluster": beta, "state": state, "reason": "Healthy", "endpoint": "192.0.2.11:51820",
					"lastHandshakeTime": time.Now().UTC().Format(time.RFC3339), "rttMicros": int64(180)}}}
		}
		apply := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": brokerv1.SchemeGroupVersion.String(), "kind": "Cluster",
			"metadata": map[string]any{"name": alpha, "namespace": ns},
			"status":   map[string]any{"tunnel": tunnel("Connected")},
		}}
		if _, err := res(asAlpha).ApplyStatus(ctx, alpha, apply, metav1.ApplyOptions{FieldManager: "isthmus-tunnel", Force: true}); err != nil {
			t.Fatalf("alpha applying its own status.tunnel: %v", err)
		}
		got, err := res(asBeta).Get(ctx, alpha, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if state, _, _ := unstructured.NestedString(got.Object, "status", "tunnel", "implementation"); state != "userspace" {
			t.Fatalf("alpha's status.tunnel was not stored: %v", got.Object["status"])
		}
		update := func(mutate func(u *unstructured.Unstructured)) error {
			u, err := res(asBeta).Get(ctx, alpha, metav1.GetOptions{})
			if err != nil {
				return err
			}
			mutate(u)
			_, err = res(asBeta).UpdateStatus(ctx, u, metav1.UpdateOptions{})
			return err
		}
		heartbeat := func(u *unstructured.Unstructured) {
			cond := map[string]any{"type": brokerv1.ClusterConditionHeartbeat, "status": "False", "reason": "LeaseExpired",
				"message": "seen by beta", "lastTransitionTime": time.Now().UTC().Format(time.RFC3339)}
			_ = unstructured.SetNestedSlice(u.Object, []any{cond}, "status", "conditions")
		}
		if err := update(heartbeat); err != nil {
			t.Errorf("beta reporting alpha's heartbeat next to alpha's tunnel status: %v", err)
		}
		wantDenied(t, update(func(u *unstructured.Unstructured) {
			_ = unstructured.SetNestedMap(u.Object, tunnel("Error"), "status", "tunnel")
		}), "rule own-records-only")
		wantDenied(t, update(func(u *unstructured.Unstructured) {
			heartbeat(u)
			_ = unstructured.SetNestedField(u.Object, int64(3), "status", "tunnel", "keyGeneration")
		}), "rule own-records-only")
		wantDenied(t, update(func(u *unstructured.Unstructured) {
			unstructured.RemoveNestedField(u.Object, "status", "tunnel")
		}), "rule own-records-only")
		// Beta's own tunnel status is beta's business.
		createOwnCluster(t, asBeta, beta)
		apply.SetName(beta)
		if _, err := res(asBeta).ApplyStatus(ctx, beta, apply, metav1.ApplyOptions{FieldManager: "isthmus-tunnel", Force: true}); err != nil {
			t.Errorf("beta applying its own status.tunnel: %v", err)
		}
	})

	t.Run("Secrets", func(t *testing.T) {
		for name, m := range map[string]*Clients{alpha: asAlpha, beta: asBeta} {
			_, err := m.Kube.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{})
			if !apierrors.IsForbidden(err) {
				t.Errorf("%s listing Secrets in the broker namespace: %v, want Forbidden", name, err)
			}
			_, err = m.Kube.CoreV1().Secrets("").List(ctx, metav1.ListOptions{})
			if !apierrors.IsForbidden(err) {
				t.Errorf("%s listing Secrets cluster-wide: %v, want Forbidden", name, err)
			}
		}
	})

	t.Run("TrustBundleOnly", func(t *testing.T) {
		// As broker install with certificates leaves them: a root Secret
		// and the published bundle.
		hub := clients(t, clusters.Broker)
		root := caSecret(brokerv1.RootCASecret, ns, CAMaterial{Cert: []byte("root cert"), Key: []byte("root key"), Bundle: []byte("root cert")})
		if _, err := hub.Kube.CoreV1().Secrets(ns).Create(ctx, root, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
		bundle := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: brokerv1.TrustBundleConfigMap, Namespace: ns},
			Data: map[string]string{brokerv1.TrustBundleKey: "root cert", brokerv1.ClustersetDomainKey: brokerv1.DefaultClustersetDomain}}
		if _, err := hub.Kube.CoreV1().ConfigMaps(ns).Create(ctx, bundle, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
		for name, m := range map[string]*Clients{alpha: asAlpha, beta: asBeta} {
			cm, err := m.Kube.CoreV1().ConfigMaps(ns).Get(ctx, brokerv1.TrustBundleConfigMap, metav1.GetOptions{})
			if err != nil || cm.Data[brokerv1.ClustersetDomainKey] == "" {
				t.Errorf("%s reading the trust bundle: %v", name, err)
				continue
			}
			_, err = m.Kube.CoreV1().Secrets(ns).Get(ctx, brokerv1.RootCASecret, metav1.GetOptions{})
			if !apierrors.IsForbidden(err) {
				t.Errorf("%s reading the clusterset root Secret: %v, want Forbidden", name, err)
			}
			_, err = m.Kube.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{})
			if !apierrors.IsForbidden(err) {
				t.Errorf("%s listing ConfigMaps: %v, want Forbidden", name, err)
			}
			_, err = m.Kube.CoreV1().ConfigMaps(ns).Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
			if !apierrors.IsForbidden(err) {
				t.Errorf("%s reading another ConfigMap: %v, want Forbidden", name, err)
			}
			cm.Data[brokerv1.TrustBundleKey] = "an attacker's root"
			_, err = m.Kube.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{DryRun: []string{metav1.DryRunAll}})
			if !apierrors.IsForbidden(err) {
				t.Errorf("%s changing the trust bundle: %v, want Forbidden", name, err)
			}
		}
	})

	t.Run("OutsideTheBrokerNamespace", func(t *testing.T) {
		slice := memberSlice(alpha)
		slice.Namespace = metav1.NamespaceDefault
		_, err := asAlpha.Dynamic.Resource(sliceGVR).Namespace(metav1.NamespaceDefault).Create(ctx, toUnstructured(t, slice), dryRun)
		if !apierrors.IsForbidden(err) {
			t.Errorf("alpha writing an EndpointSlice in default: %v, want Forbidden", err)
		}
	})

	t.Run("Tokens", func(t *testing.T) {
		req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr(int64(600))}}
		// RBAC names the identities beta may mint tokens for
		// (TestOwnTokenRuleBehindRBAC: the policy stands behind it).
		_, err := asBeta.Kube.CoreV1().ServiceAccounts(ns).CreateToken(ctx, brokerv1.MemberServiceAccount(alpha), req, metav1.CreateOptions{})
		if !apierrors.IsForbidden(err) {
			t.Errorf("beta minting alpha's token: %v, want Forbidden", err)
		}
		// ...nor a token for itself that would outlive any rotation.
		long := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr(int64(365 * 24 * 3600))}}
		_, err = asBeta.Kube.CoreV1().ServiceAccounts(ns).CreateToken(ctx, brokerv1.MemberServiceAccount(beta), long, metav1.CreateOptions{})
		wantDenied(t, err, "rule token-lifetime")
		// A member may renew its own credential.
		tr, err := asBeta.Kube.CoreV1().ServiceAccounts(ns).CreateToken(ctx, brokerv1.MemberServiceAccount(beta), req, metav1.CreateOptions{})
		if err != nil || tr.Status.Token == "" {
			t.Fatalf("beta renewing its own token: %v", err)
		}
	})
}

type dynamicResource = dynamic.ResourceInterface

// createOwnCluster creates a member's own Cluster record with its own
// credentials, and deletes it when the test ends.
func createOwnCluster(t *testing.T, member *Clients, id string) {
	t.Helper()
	res := member.Dynamic.Resource(clusterGVR).Namespace(brokerv1.DefaultBrokerNamespace)
	if _, err := res.Create(context.Background(), toUnstructured(t, validCluster(id)), metav1.CreateOptions{}); err != nil {
		t.Fatalf("%s creating its own Cluster record: %v", id, err)
	}
	t.Cleanup(func() { _ = res.Delete(context.Background(), id, metav1.DeleteOptions{}) })
}

type errString string

func (e errString) Error() string { return string(e) }

// TestSecondBrokerKeepsTheFirstGuarded installs a second broker namespace
// on the same hub: each gets its own admission policy, so the first
// broker's members are still confined to their own records.
func TestSecondBrokerKeepsTheFirstGuarded(t *testing.T) {
	hub, _, b := joined(t)
	ctx := ctxFor(t)
	var out bytes.Buffer
	if err := InstallBroker(ctx, hub, BrokerOptions{Namespace: "second-broker"}, &out); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{brokerv1.DefaultBrokerNamespace, "second-broker"} {
		p, err := hub.Kube.AdmissionregistrationV1().ValidatingAdmissionPolicies().Get(ctx, PolicyName(ns), metav1.GetOptions{})
		if err != nil {
			t.Fatalf("policy of broker namespace %s: %v", ns, err)
		}
		if got := p.Spec.MatchConstraints.NamespaceSelector.MatchLabels[corev1.LabelMetadataName]; got != ns {
			t.Errorf("policy %s selects namespace %q, want %q", p.Name, got, ns)
		}
		if _, err := hub.Kube.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Get(ctx, PolicyName(ns), metav1.GetOptions{}); err != nil {
			t.Errorf("binding of broker namespace %s: %v", ns, err)
		}
	}
	asBeta := asMember(t, b)
	_, err := asBeta.Dynamic.Resource(clusterGVR).Namespace(brokerv1.DefaultBrokerNamespace).Create(ctx,
		toUnstructured(t, validCluster(alpha)), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	wantDenied(t, err, "rule own-records-only")
}
