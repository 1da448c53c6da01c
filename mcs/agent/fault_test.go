package agent_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/isthmus-dev/isthmus/mcs/agent"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/setup"
)

// TestBrokerOutage stops the broker for longer than every grace period:
// no import is withdrawn meanwhile, an export made during the outage is
// published when the broker returns, and nothing exported before is lost.
func TestBrokerOutage(t *testing.T) {
	clusterset(t)
	ctx := ctxFor(t, 3*time.Minute)
	ns := "outage"
	namespace(t, ctx, ns, 0, 1, 2)
	workload(t, ctx, 0, ns, "before", 1, false)
	exportService(t, ctx, 0, ns, "before", nil, nil)
	eventually(t, propagation, "imported in b before the outage", func() error {
		v, err := viewImport(ctx, t, 1, ns, "before")
		if err == nil && len(v.endpoints["a"]) != 1 {
			err = fmt.Errorf("endpoints %v", v.endpoints)
		}
		return err
	})

	clusters.Broker.StopAPIServer()
	restarted := false
	defer func() {
		if !restarted {
			_ = clusters.Broker.StartAPIServer(context.Background())
		}
	}()
	workload(t, ctx, 0, ns, "during", 1, false)
	exportService(t, ctx, 0, ns, "during", nil, nil)
	always(t, withdrawAfter+3*time.Second, "imports kept while the broker is away", func() error {
		for i := range clusters.Members {
			v, err := viewImport(ctx, t, i, ns, "before")
			if err != nil {
				return fmt.Errorf("%s lost its import: %w", ids[i], err)
			}
			if len(v.endpoints["a"]) != 1 || len(v.si.Spec.IPs) != 1 {
				return fmt.Errorf("%s's import changed: %v %v", ids[i], v.endpoints, v.si.Spec.IPs)
			}
		}
		return nil
	})
	if err := clusters.Broker.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	restarted = true
	for i := range clusters.Members {
		eventually(t, time.Minute, fmt.Sprintf("export made during the outage imported in %s", ids[i]), func() error {
			v, err := viewImport(ctx, t, i, ns, "during")
			if err == nil && len(v.endpoints["a"]) != 1 {
				err = fmt.Errorf("endpoints %v; %s", v.endpoints, describeSlices(ctx, ns))
			}
			return err
		})
		if _, err := viewImport(ctx, t, i, ns, "before"); err != nil {
			t.Errorf("%s lost the earlier import after the outage: %v", ids[i], err)
		}
	}
}

// TestMemberLost stops b's agent: its Lease lapses, b's exports leave the
// other members' imports after the withdraw period (and not before the
// lease runs out), and come back when b's agent returns, with no manual
// step.
func TestMemberLost(t *testing.T) {
	clusterset(t)
	ctx := ctxFor(t, 3*time.Minute)
	ns := "lost"
	namespace(t, ctx, ns, 0, 1, 2)
	workload(t, ctx, 0, ns, "svc", 1, false)
	workload(t, ctx, 1, ns, "svc", 1, false)
	exportService(t, ctx, 0, ns, "svc", nil, nil)
	exportService(t, ctx, 1, ns, "svc", nil, nil)
	both := func() error {
		v, err := viewImport(ctx, t, 2, ns, "svc")
		if err != nil {
			return err
		}
		if got := statusClusters(v.si); !slices.Equal(got, []string{"a", "b"}) || len(v.endpoints["b"]) != 1 {
			return fmt.Errorf("clusters %v, endpoints %v", got, v.endpoints)
		}
		return nil
	}
	eventually(t, propagation, "both clusters imported in c", both)

	heartbeat := func(status, reason string) func() error {
		return func() error {
			u, err := dynamic.NewForConfigOrDie(clusters.Broker.Config).Resource(brokerv1.ClustersResource).
				Namespace(brokerv1.DefaultBrokerNamespace).Get(ctx, "b", metav1.GetOptions{})
			if err != nil {
				return err
			}
			conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
			for _, c := range conds {
				c := c.(map[string]any)
				if c["type"] == brokerv1.ClusterConditionHeartbeat {
					if c["status"] != status || c["reason"] != reason {
						return fmt.Errorf("b's Heartbeat condition is %v/%v: %v", c["status"], c["reason"], c["message"])
					}
					return nil
				}
			}
			return fmt.Errorf("b's record has no Heartbeat condition: %v", conds)
		}
	}
	eventually(t, propagation, "b reported healthy", heartbeat("True", brokerv1.ReasonLeaseRenewed))

	stopAgent(t, 1)
	stopped := time.Now()
	always(t, leaseDuration, "b kept while its lease is valid", both)
	eventually(t, withdrawAfter, "b reported unhealthy in its record", heartbeat("False", brokerv1.ReasonLeaseExpired))
	onlyA := func() error {
		v, err := viewImport(ctx, t, 2, ns, "svc")
		if err != nil {
			return err
		}
		if got := statusClusters(v.si); !slices.Equal(got, []string{"a"}) || len(v.endpoints["b"]) != 0 {
			return fmt.Errorf("clusters %v, endpoints %v", got, v.endpoints)
		}
		return nil
	}
	eventually(t, withdrawAfter+15*time.Second, "b withdrawn from c's import", onlyA)
	// b renewed its Lease at most a third of its duration before it
	// stopped; withdrawal may come no earlier than withdrawAfter after that.
	if took := time.Since(stopped); took < withdrawAfter-leaseDuration/3 {
		t.Errorf("b withdrawn %v after it stopped, before the %v withdraw period", took, withdrawAfter)
	}

	eventually(t, propagation, "b reported withdrawn", heartbeat("False", brokerv1.ReasonWithdrawn))
	// c's agent restarts while b is dead: it finds b's Lease long
	// unrenewed and keeps b withdrawn, instead of judging b from its own
	// start and bringing b's endpoints back for a withdraw period.
	stopAgent(t, 2)
	if err := startAgent(2); err != nil {
		t.Fatal(err)
	}
	always(t, withdrawAfter/2, "b still withdrawn from c's import after c's agent restarted", onlyA)
	if err := startAgent(1); err != nil {
		t.Fatal(err)
	}
	eventually(t, propagation, "b reported healthy again", heartbeat("True", brokerv1.ReasonLeaseRenewed))
	eventually(t, propagation, "b back in c's import", func() error {
		err := both()
		if err != nil {
			err = fmt.Errorf("%w; %s", err, describeMembers(ctx, ns))
		}
		return err
	})
}

// TestRestartWithoutChurn restarts a's agent with nothing changed: it
// writes nothing to the broker but its heartbeat.
func TestRestartWithoutChurn(t *testing.T) {
	clusterset(t)
	ctx := ctxFor(t, 2*time.Minute)
	ns := "churn"
	namespace(t, ctx, ns, 0, 1, 2)
	workload(t, ctx, 0, ns, "steady", 2, true)
	exportService(t, ctx, 0, ns, "steady", nil, nil)
	eventually(t, propagation, "imported in c", func() error {
		v, err := viewImport(ctx, t, 2, ns, "steady")
		if err == nil && len(v.endpoints["a"]) != 2 {
			err = fmt.Errorf("endpoints %v", v.endpoints)
		}
		return err
	})
	stopAgent(t, 0)
	if err := startAgent(0); err != nil {
		t.Fatal(err)
	}
	wantNoWrites(t, 0)
	if n := metric(t, 0, "isthmus_agent_writes_total", `target="broker-lease"`); n == 0 {
		t.Error("restarted agent has not renewed its heartbeat")
	}
}

// TestAgentCredentialsAreConfined writes, with b's agent credential (the
// Secret join stored in b), over a's export record and endpoints: the
// broker refuses.
func TestAgentCredentialsAreConfined(t *testing.T) {
	clusterset(t)
	ctx := ctxFor(t, time.Minute)
	ns := "confined"
	namespace(t, ctx, ns, 0)
	workload(t, ctx, 0, ns, "mine", 1, false)
	exportService(t, ctx, 0, ns, "mine", nil, nil)
	eventually(t, propagation, "a exported", wantCondition(ctx, t, 0, ns, "mine", mcsv1beta1.ServiceExportConditionReady, metav1.ConditionTrue, "Exported"))

	secret, err := clusters.Members[1].Client.CoreV1().Secrets(setup.MemberNamespace).Get(ctx, setup.BrokerSecret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.RESTConfigFromKubeConfig(secret.Data[setup.BrokerSecretKey])
	if err != nil {
		t.Fatal(err)
	}
	asB, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	res := asB.Resource(brokerv1.ExportedServicesResource).Namespace(brokerv1.DefaultBrokerNamespace)
	rec, err := res.Get(ctx, brokerv1.ExportedServiceName("a", ns, "mine"), metav1.GetOptions{})
	if err != nil {
		t.Fatalf("b cannot read a's record: %v", err)
	}
	rec.SetAnnotations(map[string]string{"hijacked": "by-b"})
	if _, err := res.Update(ctx, rec, metav1.UpdateOptions{}); err == nil || !strings.Contains(err.Error(), "rule own-records-only") {
		t.Errorf("b overwrote a's export record: %v", err)
	}
	if err := res.Delete(ctx, rec.GetName(), metav1.DeleteOptions{}); err == nil || !strings.Contains(err.Error(), "rule existing-records-of-others") {
		t.Errorf("b deleted a's export record: %v", err)
	}
}

// TestClusterIDMustBeSettled checks the agent's refusal to start without a
// cluster id or with one that disagrees with the ClusterProperty.
func TestClusterIDMustBeSettled(t *testing.T) {
	clusterset(t)
	ctx := ctxFor(t, time.Minute)
	memberDyn, err := dynamic.NewForConfig(clusters.Members[0].Config)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := agent.ClusterID(ctx, memberDyn, "zz"); err == nil || !strings.Contains(err.Error(), "--cluster-id=zz disagrees with ClusterProperty cluster.clusterset.k8s.io=a") {
		t.Errorf("agent with a disagreeing --cluster-id: %v", err)
	}
	if id, err := agent.ClusterID(ctx, memberDyn, ""); err != nil || id != "a" {
		t.Errorf("the ClusterProperty alone: %q, %v", id, err)
	}
	// A cluster without the property (here, the broker itself) needs the flag.
	localDyn, err := dynamic.NewForConfig(clusters.Broker.Config)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := agent.ClusterID(ctx, localDyn, ""); err == nil || !strings.Contains(err.Error(), "no cluster id: set --cluster-id") {
		t.Errorf("no id anywhere: %v", err)
	}
	if id, err := agent.ClusterID(ctx, localDyn, "east"); err != nil || id != "east" {
		t.Errorf("flag only: %q, %v", id, err)
	}
	if _, err := agent.ClusterID(ctx, localDyn, "Not_A_Label"); err == nil {
		t.Error("accepted a cluster id that is not a DNS label")
	}
}

// TestTwoReplicas runs a second agent for c: it stands by and writes
// nothing while the first leads; when the leader stops, it takes over and
// c's new exports still reach the clusterset.
func TestTwoReplicas(t *testing.T) {
	clusterset(t)
	ctx := ctxFor(t, 2*time.Minute)
	ns := "replicas"
	namespace(t, ctx, ns, 0, 2)
	const standby = 12
	if err := startReplica(standby, 2); err != nil {
		t.Fatal(err)
	}
	workload(t, ctx, 2, ns, "first", 1, false)
	exportService(t, ctx, 2, ns, "first", nil, nil)
	eventually(t, propagation, "c's export imported in a", func() error {
		_, err := viewImport(ctx, t, 0, ns, "first")
		return err
	})
	for _, target := range []string{`target="broker"`, `target="local"`, `target="broker-lease"`} {
		if n := metric(t, standby, "isthmus_agent_writes_total", target); n != 0 {
			t.Errorf("the standby replica wrote %v times (%s)", n, target)
		}
	}

	stopAgent(t, 2) // the leader releases its Lease as it stops
	agentsMu.Lock()
	agents[2] = agents[standby]
	delete(agents, standby)
	agentsMu.Unlock()
	workload(t, ctx, 2, ns, "second", 1, false)
	exportService(t, ctx, 2, ns, "second", nil, nil)
	eventually(t, propagation, "exported through the new leader", func() error {
		_, err := viewImport(ctx, t, 0, ns, "second")
		return err
	})
}
