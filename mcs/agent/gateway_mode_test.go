package agent_test

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/isthmus-dev/isthmus/mcs/agent"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/setup"
)

const gatewayName = "isthmus-gateway"

// gatewayView is what one member holds for an import in gateway mode.
type gatewayView struct {
	si     *mcsv1beta1.ServiceImport
	egress map[string]int32 // "TCP/80" -> egress port, from the annotation
	cond   *metav1.Condition
	// The derived Service's slices: "gateway" or "direct", the ready
	// addresses they list and their ports by name.
	via   string
	addrs []string
	ports map[string]int32
	mcs   []string // addresses of the MCS slices
}

func viewGateway(ctx context.Context, t *testing.T, i int, ns, name string) (*gatewayView, error) {
	si, err := mcs(t, i).MulticlusterV1beta1().ServiceImports(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	v := &gatewayView{si: si, egress: map[string]int32{}, ports: map[string]int32{},
		cond: meta.FindStatusCondition(si.Status.Conditions, agent.ConditionGatewayEgress)}
	if s, ok := si.Annotations[brokerv1.AnnotationEgressPorts]; ok {
		ports, err := brokerv1.ParseEgressPorts(s)
		if err != nil {
			return nil, fmt.Errorf("the egress annotation %q does not parse: %w", s, err)
		}
		for _, p := range ports {
			v.egress[fmt.Sprintf("%s/%d", p.Protocol, p.Port)] = p.Egress
		}
	}
	list, err := clusters.Members[i].Client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	for _, s := range list.Items {
		var addrs *[]string
		switch {
		case s.Labels[mcsv1beta1.LabelServiceName] == name:
			addrs = &v.mcs
		case s.Labels["isthmus.dev/derived-for"] == name:
			via := "direct"
			if s.Labels["isthmus.dev/slice-role"] == "gateway" {
				via = "gateway"
			}
			if v.via != "" && v.via != via {
				return nil, fmt.Errorf("derived slices both direct and through the gateway")
			}
			v.via, addrs = via, &v.addrs
			for _, p := range s.Ports {
				v.ports[*p.Name] = *p.Port
			}
		default:
			continue
		}
		for _, e := range s.Endpoints {
			if e.Conditions.Ready == nil || *e.Conditions.Ready {
				*addrs = append(*addrs, e.Addresses...)
			}
		}
	}
	sort.Strings(v.addrs)
	sort.Strings(v.mcs)
	return v, nil
}

// wantGateway checks that member i's import of name goes through the
// gateway pods, with an egress port in [min, max] for each port.
func wantGateway(ctx context.Context, t *testing.T, i int, ns, name string, min, max int32, ports ...string) func() (*gatewayView, error) {
	return func() (*gatewayView, error) {
		v, err := viewGateway(ctx, t, i, ns, name)
		if err != nil {
			return nil, err
		}
		if len(v.egress) != len(ports) {
			return nil, fmt.Errorf("egress annotation %v, want one port for each of %v", v.egress, ports)
		}
		for _, p := range ports {
			svcPort, _, _ := strings.Cut(p, "=")
			e := v.egress[svcPort]
			if e < min || e > max {
				return nil, fmt.Errorf("egress port of %s is %d, not in %d-%d (%v)", svcPort, e, min, max, v.egress)
			}
			if named := strings.TrimPrefix(p, svcPort+"="); v.ports[named] != e {
				return nil, fmt.Errorf("derived slice port %q is %d, want the egress port %d", named, v.ports[named], e)
			}
		}
		if gw := podIPs(ctx, t, i, setup.MemberNamespace, gatewayName); v.via != "gateway" || !slices.Equal(v.addrs, gw) {
			return nil, fmt.Errorf("derived slices %s to %v, want the gateway pods %v", v.via, v.addrs, gw)
		}
		if v.cond == nil || v.cond.Status != metav1.ConditionTrue || v.cond.Reason != agent.ReasonEgressAllocated {
			return nil, fmt.Errorf("GatewayEgress condition %+v", v.cond)
		}
		return v, nil
	}
}

// wantDirect checks that member i's import of name sends traffic straight
// to the pods of member from.
func wantDirect(ctx context.Context, t *testing.T, i int, ns, name string, from int) func() error {
	return func() error {
		v, err := viewGateway(ctx, t, i, ns, name)
		if err != nil {
			return err
		}
		if want := podIPs(ctx, t, from, ns, name); v.via != "direct" || !slices.Equal(v.addrs, want) {
			return fmt.Errorf("derived slices %s to %v, want %s's pods %v directly", v.via, v.addrs, ids[from], want)
		}
		return nil
	}
}

func settle[T any](t *testing.T, what string, check func() (T, error)) T {
	t.Helper()
	var out T
	eventually(t, propagation, what, func() error {
		var err error
		out, err = check()
		return err
	})
	return out
}

// setReady marks every pod of app in member i Ready or not, as a kubelet
// would after a readiness probe.
func setReady(ctx context.Context, t *testing.T, i int, ns, app string, ready bool) {
	t.Helper()
	c := clusters.Members[i].Client.CoreV1().Pods(ns)
	pods, err := c.List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
	if err != nil || len(pods.Items) == 0 {
		t.Fatalf("pods of %s: %v (%d)", app, err, len(pods.Items))
	}
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	for _, p := range pods.Items {
		for j, cond := range p.Status.Conditions {
			if cond.Type == corev1.PodReady || cond.Type == corev1.ContainersReady {
				p.Status.Conditions[j].Status = status
				p.Status.Conditions[j].LastTransitionTime = metav1.Now()
			}
		}
		if _, err := c.UpdateStatus(ctx, &p, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("marking pod %s ready=%v: %v", p.Name, ready, err)
		}
	}
}

// gatewayMode runs an agent in gateway mode with egress ports min-max.
func gatewayMode(min, max int32) withConfig {
	return func(c *agent.Config) {
		c.Dataplane = brokerv1.DataplaneGateway
		c.EgressPortMin, c.EgressPortMax = min, max
	}
}

func restartAgent(t *testing.T, i int, with ...withConfig) {
	t.Helper()
	stopAgent(t, i)
	if err := startAgent(i, with...); err != nil {
		t.Fatal(err)
	}
}

// events lists the reasons of the Events about an object in member i.
func eventReasons(ctx context.Context, t *testing.T, i int, ns, kind, name string) []string {
	list, err := clusters.Members[i].Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{
		FieldSelector: "involvedObject.kind=" + kind + ",involvedObject.name=" + name})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range list.Items {
		// The agent's only: under load the apiserver's ClusterIP repair
		// loop may report the test's own Services (ClusterIPNotAllocated).
		if e.Source.Component == "isthmus-agent" {
			out = append(out, e.Type+"/"+e.Reason)
		}
	}
	return out
}

// heldEgressPorts lists every egress port member i's imports hold, but
// those of skip.
func heldEgressPorts(ctx context.Context, t *testing.T, i int, skip string) map[int32]string {
	list, err := mcs(t, i).MulticlusterV1beta1().ServiceImports("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[int32]string{}
	for _, si := range list.Items {
		key := si.Namespace + "/" + si.Name
		ports, err := brokerv1.ParseEgressPorts(si.Annotations[brokerv1.AnnotationEgressPorts])
		if err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		for _, p := range ports {
			if other, taken := out[p.Egress]; taken {
				t.Fatalf("egress port %d held by %s and %s", p.Egress, other, key)
			}
			if key != skip {
				out[p.Egress] = key
			}
		}
	}
	return out
}

// TestGatewayMode runs b's agent in gateway mode with services exported
// from a (and one from b too): b's ClusterSetIP imports get egress ports
// on their ServiceImports and derived slices pointing at b's gateway pods
// with those ports, while headless imports, the MCS slices and the other
// members (direct mode) are as before. A restart keeps every port and
// writes nothing; gateway pods going not ready send b's derived Services
// to the direct-mode choice (b's own pods first) and back; an unexported
// service's port is reused by the next import; a full range leaves the
// imports it cannot serve direct, with a condition, an Event and a
// metric; direct mode again removes every trace.
func TestGatewayMode(t *testing.T) {
	clusterset(t)
	ctx := ctxFor(t, 6*time.Minute)
	ns := "gateway"
	namespace(t, ctx, ns, 0, 1, 2)
	workload(t, ctx, 1, setup.MemberNamespace, gatewayName, 2, false, port{"tls", corev1.ProtocolTCP, brokerv1.DefaultGatewayIngressPort})
	// Gateway pods ready before the agent starts, so that no fallback is
	// reported before the test makes one.
	eventually(t, propagation, "gateway pods ready", func() error {
		list, err := clusters.Members[1].Client.DiscoveryV1().EndpointSlices(setup.MemberNamespace).List(ctx,
			metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + gatewayName})
		if err != nil {
			return err
		}
		ready := 0
		for _, s := range list.Items {
			for _, e := range s.Endpoints {
				if e.Conditions.Ready != nil && *e.Conditions.Ready {
					ready++
				}
			}
		}
		if ready != 2 {
			return fmt.Errorf("%d ready gateway endpoints", ready)
		}
		return nil
	})
	const min, max = 17000, 17999
	gatewayArgs := gatewayMode(min, max)
	restartAgent(t, 1, gatewayArgs)
	direct := false
	t.Cleanup(func() {
		if !direct {
			stopAgent(t, 1)
			if err := startAgent(1); err != nil {
				t.Error(err)
			}
		}
	})

	workload(t, ctx, 0, ns, "one", 2, false)
	workload(t, ctx, 1, ns, "one", 1, false)
	workload(t, ctx, 0, ns, "two", 1, false, port{"http", corev1.ProtocolTCP, 80}, port{"grpc", corev1.ProtocolTCP, 9090})
	workload(t, ctx, 0, ns, "flat", 2, true)
	exportService(t, ctx, 0, ns, "one", nil, nil)
	exportService(t, ctx, 1, ns, "one", nil, nil)
	exportService(t, ctx, 0, ns, "two", nil, nil)
	exportService(t, ctx, 0, ns, "flat", nil, nil)

	one := settle(t, "b's import of one through the gateway", wantGateway(ctx, t, 1, ns, "one", min, max, "TCP/80=http"))
	two := settle(t, "b's import of two through the gateway", wantGateway(ctx, t, 1, ns, "two", min, max, "TCP/80=http", "TCP/9090=grpc"))
	if one.egress["TCP/80"] == two.egress["TCP/80"] || one.egress["TCP/80"] == two.egress["TCP/9090"] || two.egress["TCP/80"] == two.egress["TCP/9090"] {
		t.Fatalf("egress ports shared: one %v, two %v", one.egress, two.egress)
	}
	eventually(t, propagation, "b's MCS slices of one list both clusters' pods", func() error {
		v, err := viewGateway(ctx, t, 1, ns, "one")
		if err != nil {
			return err
		}
		if want := sorted(append(podIPs(ctx, t, 0, ns, "one"), podIPs(ctx, t, 1, ns, "one")...)); len(want) != 3 || !slices.Equal(v.mcs, want) {
			return fmt.Errorf("MCS endpoints %v, want %v", v.mcs, want)
		}
		return nil
	})
	eventually(t, propagation, "headless import unchanged in gateway mode", func() error {
		v, err := viewGateway(ctx, t, 1, ns, "flat")
		if err != nil {
			return err
		}
		if len(v.egress) != 0 || v.cond != nil || v.via != "" || !slices.Equal(v.mcs, podIPs(ctx, t, 0, ns, "flat")) {
			return fmt.Errorf("headless import: egress %v, condition %v, derived slices %q, MCS endpoints %v", v.egress, v.cond, v.via, v.mcs)
		}
		return nil
	})
	eventually(t, propagation, "a and c stay direct", func() error {
		for _, i := range []int{0, 2} {
			if err := wantDirect(ctx, t, i, ns, "two", 0)(); err != nil {
				return fmt.Errorf("%s: %w", ids[i], err)
			}
			if v, _ := viewGateway(ctx, t, i, ns, "two"); len(v.egress) != 0 || v.cond != nil {
				return fmt.Errorf("%s in direct mode has egress %v, condition %v", ids[i], v.egress, v.cond)
			}
		}
		return nil
	})

	step := func(name string, f func(t *testing.T)) {
		if !t.Run(name, f) {
			t.FailNow() // each step builds on the one before
		}
	}
	step("restart keeps every port and writes nothing", func(t *testing.T) {
		before := heldEgressPorts(ctx, t, 1, "")
		restartAgent(t, 1, gatewayArgs)
		wantNoWrites(t, 1)
		if after := heldEgressPorts(ctx, t, 1, ""); fmt.Sprint(after) != fmt.Sprint(before) {
			t.Errorf("egress ports changed across the restart:\n before %v\n after  %v", before, after)
		}
		if n := metric(t, 1, "isthmus_agent_gateway_egress_ports_in_use"); int(n) != len(before) {
			t.Errorf("in-use metric %v, %d ports held", n, len(before))
		}
	})

	gatewayPods := podIPs(ctx, t, 1, setup.MemberNamespace, gatewayName)
	step("b's record publishes its ready gateway pods for the other clusters' gateways", func(t *testing.T) {
		eventually(t, propagation, "b's gateways in its Cluster record", wantRecordGateways(ctx, "b", gatewayPods...))
	})

	step("no ready gateway: direct, local first, and back", func(t *testing.T) {
		if r := eventReasons(ctx, t, 1, setup.MemberNamespace, "Service", gatewayName); len(r) != 0 {
			t.Fatalf("gateway events before any outage: %v", r)
		}
		setReady(ctx, t, 1, setup.MemberNamespace, gatewayName, false)
		eventually(t, propagation, "no gateway in b's record while none is ready", wantRecordGateways(ctx, "b"))
		eventually(t, propagation, "one falls back to b's own pods", wantDirect(ctx, t, 1, ns, "one", 1))
		eventually(t, propagation, "two falls back to a's pods", wantDirect(ctx, t, 1, ns, "two", 0))
		if v, _ := viewGateway(ctx, t, 1, ns, "one"); v.egress["TCP/80"] != one.egress["TCP/80"] {
			t.Errorf("falling back changed the egress port: %v, was %v", v.egress, one.egress)
		}
		if n := metric(t, 1, "isthmus_agent_gateway_fallback "); n != 1 {
			t.Errorf("fallback metric %v", n)
		}
		eventually(t, propagation, "a Warning Event on the gateway Service", func() error {
			if r := eventReasons(ctx, t, 1, setup.MemberNamespace, "Service", gatewayName); !slices.Contains(r, "Warning/"+agent.ReasonNoReadyGateway) {
				return fmt.Errorf("events %v", r)
			}
			return nil
		})

		setReady(ctx, t, 1, setup.MemberNamespace, gatewayName, true)
		eventually(t, propagation, "b's gateways back in its record", wantRecordGateways(ctx, "b", gatewayPods...))
		settle(t, "one through the gateway again", wantGateway(ctx, t, 1, ns, "one", min, max, "TCP/80=http"))
		settle(t, "two through the gateway again", wantGateway(ctx, t, 1, ns, "two", min, max, "TCP/80=http", "TCP/9090=grpc"))
		if n := metric(t, 1, "isthmus_agent_gateway_fallback "); n != 0 {
			t.Errorf("fallback metric %v after recovery", n)
		}
		if n := metric(t, 1, "isthmus_agent_gateway_fallbacks_total"); n != 1 {
			t.Errorf("fallbacks counted %v, want 1", n)
		}
		if r := eventReasons(ctx, t, 1, setup.MemberNamespace, "Service", gatewayName); !slices.Contains(r, "Normal/"+agent.ReasonGatewayReady) {
			t.Errorf("no Normal event on recovery: %v", r)
		}
	})

	var reused int32
	step("unexport releases the port for the next import", func(t *testing.T) {
		released := one.egress["TCP/80"]
		unexport(t, ctx, 0, ns, "one")
		unexport(t, ctx, 1, ns, "one")
		eventually(t, propagation, "b's import of one gone", func() error {
			if _, err := mcs(t, 1).MulticlusterV1beta1().ServiceImports(ns).Get(ctx, "one", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				return fmt.Errorf("still there: %v", err)
			}
			return nil
		})
		held := heldEgressPorts(ctx, t, 1, "")
		lowest := int32(min)
		for held[lowest] != "" {
			lowest++
		}
		if lowest != released {
			t.Fatalf("lowest free port is %d, not the released %d (held: %v)", lowest, released, held)
		}
		workload(t, ctx, 0, ns, "three", 1, false)
		exportService(t, ctx, 0, ns, "three", nil, nil)
		three := settle(t, "three through the gateway", wantGateway(ctx, t, 1, ns, "three", min, max, "TCP/80=http"))
		if reused = three.egress["TCP/80"]; reused != released {
			t.Errorf("three got egress port %d, not the released %d", reused, released)
		}
	})

	step("a full range: the rest go direct, reported", func(t *testing.T) {
		// A one-port range holding three's port: three keeps it, every
		// other ClusterSetIP import here waits.
		restartAgent(t, 1, gatewayMode(reused, reused))
		settle(t, "three keeps its port", wantGateway(ctx, t, 1, ns, "three", reused, reused, "TCP/80=http"))
		eventually(t, propagation, "two waits, direct", func() error {
			if err := wantDirect(ctx, t, 1, ns, "two", 0)(); err != nil {
				return err
			}
			v, err := viewGateway(ctx, t, 1, ns, "two")
			if err != nil {
				return err
			}
			if len(v.egress) != 0 {
				return fmt.Errorf("egress annotation %v on a waiting import", v.egress)
			}
			if v.cond == nil || v.cond.Status != metav1.ConditionFalse || v.cond.Reason != agent.ReasonEgressExhausted ||
				!strings.Contains(v.cond.Message, "TCP/80, TCP/9090") || !strings.Contains(v.cond.Message, "--egress-ports") {
				return fmt.Errorf("condition %+v", v.cond)
			}
			// Its recorded ports lie outside the new range: reassigned,
			// then exhausted, both said in Events.
			if r := eventReasons(ctx, t, 1, ns, "ServiceImport", "two"); !slices.Contains(r, "Warning/"+agent.ReasonEgressExhausted) ||
				!slices.Contains(r, "Warning/"+agent.ReasonEgressReassigned) {
				return fmt.Errorf("events %v", r)
			}
			return nil
		})
		if n := metric(t, 1, "isthmus_agent_gateway_egress_exhausted_imports"); n < 1 {
			t.Errorf("exhausted imports metric %v", n)
		}
		if n := metric(t, 1, "isthmus_agent_gateway_egress_exhaustions_total"); n < 1 {
			t.Errorf("exhaustions metric %v", n)
		}
		if n := metric(t, 1, "isthmus_agent_gateway_egress_ports_capacity"); n != 1 {
			t.Errorf("capacity metric %v", n)
		}

		// A one-port import waits too; when three goes, its port passes to
		// a waiting import that needs no more than it (four, or another
		// test's one-port import): two needs two ports and keeps waiting.
		workload(t, ctx, 0, ns, "four", 1, false)
		exportService(t, ctx, 0, ns, "four", nil, nil)
		eventually(t, propagation, "four waits, direct", func() error {
			if err := wantDirect(ctx, t, 1, ns, "four", 0)(); err != nil {
				return err
			}
			if v, _ := viewGateway(ctx, t, 1, ns, "four"); v.cond == nil || v.cond.Reason != agent.ReasonEgressExhausted {
				return fmt.Errorf("condition %+v", v.cond)
			}
			return nil
		})
		unexport(t, ctx, 0, ns, "three")
		eventually(t, propagation, "a waiting import takes the freed port", func() error {
			held := heldEgressPorts(ctx, t, 1, "")
			if owner := held[reused]; owner == "" || owner == ns+"/three" || owner == ns+"/two" {
				return fmt.Errorf("port %d held by %q", reused, owner)
			}
			return nil
		})
		if held := heldEgressPorts(ctx, t, 1, ""); held[reused] == ns+"/four" {
			settle(t, "four through the gateway", wantGateway(ctx, t, 1, ns, "four", reused, reused, "TCP/80=http"))
		}
	})

	direct = true
	restartAgent(t, 1)
	eventually(t, propagation, "direct mode again: no egress annotation or condition anywhere in b", func() error {
		list, err := mcs(t, 1).MulticlusterV1beta1().ServiceImports("").List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, si := range list.Items {
			if _, ok := si.Annotations[brokerv1.AnnotationEgressPorts]; ok || meta.FindStatusCondition(si.Status.Conditions, agent.ConditionGatewayEgress) != nil {
				return fmt.Errorf("%s/%s still has gateway traces", si.Namespace, si.Name)
			}
		}
		return wantDirect(ctx, t, 1, ns, "two", 0)()
	})
	slicesLeft, err := clusters.Members[1].Client.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{LabelSelector: "isthmus.dev/slice-role=gateway"})
	if err != nil || len(slicesLeft.Items) != 0 {
		t.Errorf("gateway slices left in direct mode: %d (%v)", len(slicesLeft.Items), err)
	}
}

func sorted(s []string) []string {
	out := slices.Clone(s)
	sort.Strings(out)
	return out
}

// wantRecordGateways checks that cluster's broker record lists exactly the
// given addresses as its gateways, at the default ingress port.
func wantRecordGateways(ctx context.Context, cluster string, ips ...string) func() error {
	return func() error {
		u, err := dynamic.NewForConfigOrDie(clusters.Broker.Config).Resource(brokerv1.ClustersResource).
			Namespace(brokerv1.DefaultBrokerNamespace).Get(ctx, cluster, metav1.GetOptions{})
		if err != nil {
			return err
		}
		var rec brokerv1.Cluster
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &rec); err != nil {
			return err
		}
		var got []string
		for _, g := range rec.Spec.Gateways {
			if g.Port != brokerv1.DefaultGatewayIngressPort {
				return fmt.Errorf("gateway %s at port %d, want %d", g.Address, g.Port, brokerv1.DefaultGatewayIngressPort)
			}
			got = append(got, g.Address)
		}
		if want := sorted(ips); !slices.Equal(sorted(got), want) {
			return fmt.Errorf("record's gateways %v, want %v", got, want)
		}
		return nil
	}
}
