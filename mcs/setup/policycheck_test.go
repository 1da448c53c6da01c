package setup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// TestBrokerPoliciesChecked (M7): someone deletes the tunnel-writes
// policy's binding on the hub. The agent's check, with the member's own
// identity, turns not ready naming the binding and what to do, and says so
// in isthmus_broker_policies_missing; join refuses to join such a broker.
// `broker install` puts it back and the check is ready again.
func TestBrokerPoliciesChecked(t *testing.T) {
	hub, a, _ := joined(t)
	ctx := ctxFor(t)
	ns := brokerv1.DefaultBrokerNamespace
	agent := asMember(t, a)
	if err := CheckBrokerPolicies(ctx, agent.Kube, ns); err != nil {
		t.Fatalf("a freshly installed broker: %v", err)
	}
	reg := prometheus.NewRegistry()
	check, err := NewPolicyCheck(PolicyCheckConfig{Broker: agent.Kube, Namespace: ns, Interval: 200 * time.Millisecond,
		Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})), Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go check.Run(rctx)
	eventually(t, "the check ready", check.Ready)

	name := TunnelPolicyName(ns)
	if err := hub.Kube.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := InstallBroker(context.Background(), hub, BrokerOptions{}, &bytes.Buffer{}); err != nil {
			t.Errorf("restoring the broker: %v", err)
		}
	})
	eventually(t, "the check failing", func() error {
		if check.Ready() == nil {
			return errors.New("still ready")
		}
		return nil
	})
	msg := check.Ready().Error()
	for _, want := range []string{"ValidatingAdmissionPolicyBinding " + name + " is missing", "isthmusctl broker install"} {
		if !strings.Contains(msg, want) {
			t.Errorf("readiness says %q, want it to name %q", msg, want)
		}
	}
	if got := testutil.ToFloat64(check.missing); got != 1 {
		t.Errorf("isthmus_broker_policies_missing = %v, want 1", got)
	}
	_, err = Join(ctx, hub, a, JoinOptions{ClusterID: alpha}, &bytes.Buffer{})
	var unguarded *UnguardedError
	if !errors.As(err, &unguarded) || !strings.Contains(err.Error(), name) {
		t.Errorf("join with a binding missing: %v, want it refused naming %s", err, name)
	}

	if err := InstallBroker(ctx, hub, BrokerOptions{}, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the check ready again", check.Ready)

	// A member that may not read the policies (a broker installed before
	// the check) is told so, not left waiting.
	reader := PolicyReaderName(ns)
	if err := hub.Kube.RbacV1().ClusterRoleBindings().Delete(ctx, reader, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the check failing without the reader", func() error {
		err := CheckBrokerPolicies(ctx, agent.Kube, ns)
		if !errors.As(err, &unguarded) || !strings.Contains(err.Error(), "ClusterRole "+reader) {
			return fmt.Errorf("CheckBrokerPolicies without the reader binding: %v", err)
		}
		return nil
	})
	if err := InstallBroker(ctx, hub, BrokerOptions{}, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the check ready with the reader back", check.Ready)
	if got := testutil.ToFloat64(check.missing); got != 0 {
		t.Errorf("isthmus_broker_policies_missing = %v, want 0", got)
	}
}

// TestMembersHaveTheirOwnFlowSchema: the broker's FlowSchema and priority
// level exist, and the apiserver classifies every member identity's
// requests into them (the X-Kubernetes-PF-FlowSchema-UID header of its
// answers), distinguished by user; the hub admin's requests are not.
func TestMembersHaveTheirOwnFlowSchema(t *testing.T) {
	hub, a, b := joined(t)
	ctx := ctxFor(t)
	ns := brokerv1.DefaultBrokerNamespace
	fc := hub.Kube.FlowcontrolV1()
	fs, err := fc.FlowSchemas().Get(ctx, FairnessName(ns), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	plc, err := fc.PriorityLevelConfigurations().Get(ctx, FairnessName(ns), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if fs.Spec.DistinguisherMethod == nil || fs.Spec.DistinguisherMethod.Type != "ByUser" || fs.Spec.PriorityLevelConfiguration.Name != plc.Name {
		t.Errorf("FlowSchema %s: distinguisher %v, level %s", fs.Name, fs.Spec.DistinguisherMethod, fs.Spec.PriorityLevelConfiguration.Name)
	}
	classified := func(cfg *rest.Config) (string, string) {
		t.Helper()
		client, err := rest.HTTPClientFor(cfg)
		if err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(cfg.Host, "/")+"/apis/broker.isthmus.dev/v1alpha1/namespaces/"+ns+"/clusters", nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.Header.Get("X-Kubernetes-PF-FlowSchema-UID"), resp.Header.Get("X-Kubernetes-PF-PriorityLevel-UID")
	}
	// The apiserver's flow control picks new FlowSchemas up within seconds.
	eventually(t, "alpha's agent classified into the members' FlowSchema", func() error {
		if got, _ := classified(asMember(t, a).Config); got != string(fs.UID) {
			return errors.New("classified into FlowSchema " + got)
		}
		return nil
	})
	for name, c := range map[string]*Clients{"beta's agent": asMember(t, b), "alpha's xDS server": asRole(t, a, RoleXDS), "alpha's tunnel": asRole(t, a, RoleTunnel)} {
		if fsUID, plcUID := classified(c.Config); fsUID != string(fs.UID) || plcUID != string(plc.UID) {
			t.Errorf("%s's request classified into FlowSchema %s, priority level %s; want %s, %s", name, fsUID, plcUID, fs.UID, plc.UID)
		}
	}
	if got, _ := classified(hub.Config); got == string(fs.UID) {
		t.Error("the hub admin's request was classified into the members' FlowSchema")
	}
}
