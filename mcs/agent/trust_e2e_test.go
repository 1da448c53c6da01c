package agent_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-dev/isthmus/mcs/agent"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// TestForeignEndpointsLeftOut is the endpoint injection as an importer
// meets it on a broker whose admission does not stop it (one installed by
// an older version): b's broker EndpointSlice for an export gains an
// address in no range b claims, written straight into the real broker.
// Every importer leaves it out of its slices and says so on its
// ServiceImport, and the rest of b's endpoints stay.
func TestForeignEndpointsLeftOut(t *testing.T) {
	clusterset(t)
	ctx := ctxFor(t, 3*time.Minute)
	const ns, injected = "hostile", "198.51.100.7"
	namespace(t, ctx, ns, 0, 1, 2)
	workload(t, ctx, 1, ns, "web", 1, false)
	exportService(t, ctx, 1, ns, "web", nil, nil)
	var want []string
	eventually(t, propagation, "b's endpoint imported in c", func() error {
		want = podIPs(ctx, t, 1, ns, "web")
		v, err := viewImport(ctx, t, 2, ns, "web")
		if err != nil {
			return err
		}
		if len(want) != 1 || !slices.Equal(v.endpoints["b"], want) {
			return fmt.Errorf("endpoints %v, want b's pod %v", v.endpoints, want)
		}
		return nil
	})

	// b's agent would put its own slice back at once; with it stopped, b
	// stays imported (healthy, then lapsed) for withdrawAfter.
	stopAgent(t, 1)
	t.Cleanup(func() {
		if err := startAgent(1); err != nil {
			t.Errorf("restarting b's agent: %v", err)
		}
	})
	hub := clusters.Broker.Client.DiscoveryV1().EndpointSlices(brokerv1.DefaultBrokerNamespace)
	list, err := hub.List(ctx, metav1.ListOptions{LabelSelector: brokerv1.LabelSourceCluster + "=b," + brokerv1.LabelServiceNamespace + "=" + ns})
	if err != nil {
		t.Fatal(err)
	}
	injectedInto := ""
	for _, s := range list.Items {
		if len(s.Endpoints) == 0 {
			continue
		}
		e := s.Endpoints[0]
		e.Addresses = []string{injected}
		s.Endpoints = append(s.Endpoints, e)
		if _, err := hub.Update(ctx, &s, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("writing the injected slice as the hub admin: %v", err)
		}
		injectedInto = s.Name
		break
	}
	if injectedInto == "" {
		var names []string
		for _, s := range list.Items {
			names = append(names, fmt.Sprintf("%s (%d endpoints)", s.Name, len(s.Endpoints)))
		}
		t.Fatalf("no broker slice of b's export with endpoints among %v", names)
	}

	for _, i := range []int{0, 2} {
		eventually(t, withdrawAfter-2*time.Second, fmt.Sprintf("the injection refused in %s", ids[i]), func() error {
			v, err := viewImport(ctx, t, i, ns, "web")
			if err != nil {
				return err
			}
			c := meta.FindStatusCondition(v.si.Status.Conditions, agent.ConditionRecordsRefused)
			if c == nil || c.Status != metav1.ConditionTrue || !strings.Contains(c.Message, injected) || !strings.Contains(c.Message, "cluster b") {
				return fmt.Errorf("condition %+v", c)
			}
			if !slices.Equal(v.endpoints["b"], want) {
				return fmt.Errorf("b's endpoints %v; want only %v", v.endpoints["b"], want)
			}
			return nil
		})
		if n := metric(t, i, "isthmus_agent_imports_refused_records_total", `cluster="b"`); n < 1 {
			t.Errorf("%s: isthmus_agent_imports_refused_records_total{cluster=b} = %v", ids[i], n)
		}
	}
}
