package setup

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"

	brokerclient "github.com/isthmus-dev/isthmus/mcs/api/broker/generated/clientset/versioned"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/hubquota"
)

// runHubQuota runs the hub's record counter against the test broker as
// the chart does: with the identity broker install made for it
// (impersonated here), so its Role is all it may use. It stops with the
// test.
func runHubQuota(t *testing.T, hub *Clients, reg *prometheus.Registry) {
	t.Helper()
	ns := brokerv1.DefaultBrokerNamespace
	cfg := rest.CopyConfig(hub.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + ns + ":" + HubQuotaName,
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"}}
	md, err := metadata.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	bc, err := brokerclient.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c, err := hubquota.New(hubquota.Config{Metadata: md, Broker: bc, Namespace: ns, Debounce: 200 * time.Millisecond,
		Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})), Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("the record counter: %v", err)
		}
	})
	eventually(t, "the record counter to be ready", c.Ready)
}

// memberStatus reads member's MemberPolicy status as the hub admin.
func memberStatus(t *testing.T, hub *Clients, member string) brokerv1.MemberPolicyStatus {
	t.Helper()
	u, err := hub.Dynamic.Resource(memberPolicyGVR).Namespace(brokerv1.DefaultBrokerNamespace).Get(context.Background(), member, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var mp brokerv1.MemberPolicy
	fromUnstructured(t, u, &mp)
	return mp.Status
}

// gauge is isthmus_hub_member_records{member,kind} as reg holds it, -1
// when absent.
func gauge(t *testing.T, reg *prometheus.Registry, member, kind string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "isthmus_hub_member_records" {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, p := range m.GetLabel() {
				l[p.GetName()] = p.GetValue()
			}
			if l["member"] == member && l["kind"] == kind {
				return m.GetGauge().GetValue()
			}
		}
	}
	return -1
}

// TestRecordCountLimitsAtTheHub: member beta, with its own broker
// credential, creates exports and EndpointSlices past the limits the hub
// admin set in its MemberPolicy (join --max-exports
// --max-endpoint-slices). Once the hub's record counter (running with its
// own least-privilege identity) has counted them, the broker refuses the
// next create naming the rule, the limit and how to raise it, while
// changing a record beta holds still passes; deleting one lets beta
// create again; alpha is not limited by beta's count.
func TestRecordCountLimitsAtTheHub(t *testing.T) {
	hub, a, b := joined(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	asBeta, asAlpha := asMember(t, b), asMember(t, a)
	waitForAllowlist(t, asBeta)
	reg := prometheus.NewRegistry()
	runHubQuota(t, hub, reg)
	eventually(t, "beta's records to be counted", func() error {
		if memberStatus(t, hub, beta).ObservedTime == nil {
			return fmt.Errorf("MemberPolicy %s has no count", beta)
		}
		return nil
	})
	t.Run("join and broker install say whether a counter counts", func(t *testing.T) {
		if note := recordCounterNote(ctx, hub, brokerv1.DefaultBrokerNamespace, ""); note != "" {
			t.Errorf("with the counter running: %s", note)
		}
		if note := recordCounterNote(ctx, hub, "no-broker-here", ""); !strings.Contains(note, "not enforced until `isthmus hub-quota` runs") {
			t.Errorf("with no count anywhere: %q", note)
		}
	})
	// What beta holds already (other tests' records), and room for 3
	// more exports and 2 more slices.
	start := memberStatus(t, hub, beta)
	limitExports, limitSlices := start.Exports+3, start.EndpointSlices+2
	var out bytes.Buffer
	rejoin := func(exports, slices int32) {
		t.Helper()
		if _, err := Join(context.Background(), hub, b, JoinOptions{MaxExports: &exports, MaxEndpointSlices: &slices}, &out); err != nil {
			t.Fatalf("joining beta again with its limits: %v\n%s", err, out.String())
		}
	}
	rejoin(limitExports, limitSlices)
	t.Cleanup(func() { rejoin(brokerv1.DefaultMaxExports, brokerv1.DefaultMaxEndpointSlices) })

	ns := brokerv1.DefaultBrokerNamespace
	exports := asBeta.Dynamic.Resource(exportedServiceGVR).Namespace(ns)
	var made []string
	t.Cleanup(func() {
		for _, n := range made {
			_ = exports.Delete(context.Background(), n, metav1.DeleteOptions{})
		}
	})
	createExport := func(name string) error {
		_, err := exports.Create(ctx, toUnstructured(t, validExport(beta, "demo", name)), metav1.CreateOptions{})
		if err == nil {
			made = append(made, brokerv1.ExportedServiceName(beta, "demo", name))
		}
		return err
	}
	for i := range 3 {
		if err := createExport(fmt.Sprintf("quota-%d", i)); err != nil {
			t.Fatalf("beta's export %d of its %d: %v", i+1, limitExports, err)
		}
	}
	created := time.Now()
	// Admission reads the count from its own watch of MemberPolicies: the
	// lag is until a create past the limit is refused.
	eventually(t, "beta's exports to be counted and enforced", func() error {
		if s := memberStatus(t, hub, beta); s.Exports != limitExports {
			return fmt.Errorf("counted %d exports, want %d", s.Exports, limitExports)
		}
		_, err := exports.Create(ctx, toUnstructured(t, validExport(beta, "demo", "quota-over")), dryRunCreate)
		if err == nil {
			return fmt.Errorf("counted but not yet enforced")
		}
		return nil
	})
	t.Logf("from the last create to the limit enforced: %v (debounce 200ms)", time.Since(created).Round(10*time.Millisecond))
	if g := gauge(t, reg, beta, "exports"); g != float64(limitExports) {
		t.Errorf("isthmus_hub_member_records{member=beta,kind=exports} = %v, want %d", g, limitExports)
	}

	t.Run("the next export is refused", func(t *testing.T) {
		err := createExport("quota-over")
		wantDenied(t, err, "rule max-exports")
		t.Logf("refused: %v", err)
		wantErrContaining(t, err, "member 'beta' holds "+fmt.Sprint(limitExports)+" ExportedServices", "as counted at",
			"spec.limits.maxExports is "+fmt.Sprint(limitExports), "MemberPolicy isthmus-broker/beta", "isthmusctl join --max-exports")
	})
	t.Run("changing an export beta holds still passes", func(t *testing.T) {
		u, err := exports.Get(ctx, made[0], metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		u.SetAnnotations(map[string]string{"example.com/touched": "yes"})
		if _, err := exports.Update(ctx, u, metav1.UpdateOptions{}); err != nil {
			t.Errorf("beta changing its own export at its limit: %v", err)
		}
	})
	t.Run("another member is not limited by beta's count", func(t *testing.T) {
		e := asAlpha.Dynamic.Resource(exportedServiceGVR).Namespace(ns)
		for i := range int(limitExports) + 1 {
			if _, err := e.Create(ctx, toUnstructured(t, validExport(alpha, "demo", fmt.Sprintf("quota-%d", i))), dryRunCreate); err != nil {
				t.Fatalf("alpha's export %d: %v", i+1, err)
			}
		}
	})
	t.Run("deleting one lets beta export again", func(t *testing.T) {
		if err := exports.Delete(ctx, made[0], metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		made = made[1:]
		eventually(t, "beta to export again once the delete is counted", func() error { return createExport("quota-again") })
	})

	t.Run("slices past the limit are refused", func(t *testing.T) {
		slices := asBeta.Dynamic.Resource(sliceGVR).Namespace(ns)
		var names []string
		t.Cleanup(func() {
			for _, n := range names {
				_ = slices.Delete(context.Background(), n, metav1.DeleteOptions{})
			}
		})
		create := func(i int) error {
			s := memberSlice(beta)
			s.Name = fmt.Sprintf("quota-demo-%s-%d", beta, i)
			_, err := slices.Create(ctx, toUnstructured(t, s), metav1.CreateOptions{})
			if err == nil {
				names = append(names, s.Name)
			}
			return err
		}
		for i := range 2 {
			if err := create(i); err != nil {
				t.Fatalf("beta's slice %d: %v", i+1, err)
			}
		}
		eventually(t, "beta's slices to be counted", func() error {
			if s := memberStatus(t, hub, beta); s.EndpointSlices != limitSlices {
				return fmt.Errorf("counted %d slices, want %d", s.EndpointSlices, limitSlices)
			}
			return nil
		})
		err := create(2)
		wantDenied(t, err, "rule max-endpoint-slices")
		wantErrContaining(t, err, "spec.limits.maxEndpointSlices is "+fmt.Sprint(limitSlices), "isthmusctl join --max-endpoint-slices")
	})
}

// setMemberStatus writes member's MemberPolicy status as the hub admin
// (or the counter) would; nil counts clear it.
func setMemberStatus(t *testing.T, hub *Clients, member string, status *brokerv1.MemberPolicyStatus) {
	t.Helper()
	res := hub.Dynamic.Resource(memberPolicyGVR).Namespace(brokerv1.DefaultBrokerNamespace)
	u, err := res.Get(context.Background(), member, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if status == nil {
		unstructured.RemoveNestedField(u.Object, "status")
	} else {
		m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(status)
		if err != nil {
			t.Fatal(err)
		}
		u.Object["status"] = m
	}
	if _, err := res.UpdateStatus(context.Background(), u, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestRecordLimitsFailOpenWithoutCount: with no counter, beta's
// MemberPolicy holds no count, and beta's exports are let through even
// at a limit of 0 (the per-record rules still judge them); a count, once
// written, is what the rule compares with the limit.
func TestRecordLimitsFailOpenWithoutCount(t *testing.T) {
	hub, _, b := joined(t)
	ctx := ctxFor(t)
	asBeta := asMember(t, b)
	waitForAllowlist(t, asBeta)
	var out bytes.Buffer
	zero := int32(0)
	if _, err := Join(ctx, hub, b, JoinOptions{MaxExports: &zero}, &out); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		def := int32(brokerv1.DefaultMaxExports)
		if _, err := Join(context.Background(), hub, b, JoinOptions{MaxExports: &def}, &out); err != nil {
			t.Errorf("restoring beta's limit: %v", err)
		}
	})
	setMemberStatus(t, hub, beta, nil)
	exports := asBeta.Dynamic.Resource(exportedServiceGVR).Namespace(brokerv1.DefaultBrokerNamespace)
	// The limit of 0 is in place once a count says so; then the count is
	// cleared, as on a hub where no counter ever ran.
	now := metav1.NewTime(time.Now().Truncate(time.Second))
	setMemberStatus(t, hub, beta, &brokerv1.MemberPolicyStatus{ObservedTime: &now})
	eventually(t, "the limit of 0 to be enforced", func() error {
		_, err := exports.Create(ctx, toUnstructured(t, validExport(beta, "demo", "open")), dryRunCreate)
		if err == nil || !strings.Contains(err.Error(), "rule max-exports") {
			return fmt.Errorf("not yet refused: %v", err)
		}
		return nil
	})
	setMemberStatus(t, hub, beta, nil)
	eventually(t, "an uncounted member's export to pass", func() error {
		_, err := exports.Create(ctx, toUnstructured(t, validExport(beta, "demo", "open")), dryRunCreate)
		return err
	})
	// The per-record rules still hold without a count.
	_, err := exports.Create(ctx, toUnstructured(t, validExport(beta, "kube-system", "open")), dryRunCreate)
	wantDenied(t, err, "rule export-namespaces")
}
