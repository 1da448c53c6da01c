package agent_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-dev/isthmus/mcs/agent"
	brokerclient "github.com/isthmus-dev/isthmus/mcs/api/broker/generated/clientset/versioned"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/setup"
)

// TestImportCapHoldsAgainstAFlood is H3's import flood through the real
// broker: a member admitted with its own broker credential ("mallory",
// no cluster behind it) writes cap+2 exports into a namespace c has.
// c's agent, run with a small cap, imports exactly the oldest: the
// other two get no ServiceImport and no derived Service (no ClusterIP of
// c's range), the one of them that a also exports is imported with a's
// endpoints only and says why on its ServiceImport, c counts both in
// isthmus_agent_imports_capped and says so on its Namespace. When
// mallory unexports a taken one, the next in rank comes in with nothing
// else happening; when one more goes, the shared one takes mallory back
// and its condition clears. a, with the default cap, imports them all.
func TestImportCapHoldsAgainstAFlood(t *testing.T) {
	clusterset(t)
	ctx := ctxFor(t, 4*time.Minute)
	const ns, hostile = "flood", "mallory"
	namespace(t, ctx, ns, 0, 2)
	hub := brokerclient.NewForConfigOrDie(clusters.Broker.Config).BrokerV1alpha1()
	bns := brokerv1.DefaultBrokerNamespace

	// c's cap holds for every other cluster: it leaves room for what a
	// and b export already (other tests' services) and for a's one below.
	limit := 3
	all, err := hub.ExportedServices(bns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	per := map[string]int{}
	for _, e := range all.Items {
		per[e.Spec.SourceCluster]++
	}
	for c, n := range per {
		if c != "c" {
			limit = max(limit, n+2)
		}
	}
	svc := func(i int) string { return fmt.Sprintf("svc-%d", i) }
	// imported is what c should hold: mallory's svc-i for each i, and
	// the shared one from clusters.
	shared := svc(limit + 1)
	imported := func(sharedFrom []string, is ...int) map[string][]string {
		out := map[string][]string{shared: sharedFrom}
		for _, i := range is {
			out[svc(i)] = []string{hostile}
		}
		return out
	}
	upTo := func(n int, skip ...int) []int {
		var out []int
		for i := range n {
			if !slices.Contains(skip, i) {
				out = append(out, i)
			}
		}
		return out
	}

	stopAgent(t, 2)
	if err := startAgent(2, func(c *agent.Config) { c.MaxImportsPerCluster = limit }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stopAgent(t, 2)
		if err := startAgent(2); err != nil {
			t.Errorf("restarting c's agent with the default cap: %v", err)
		}
	})

	// a exports the one service mallory's flood will leave out in c.
	workload(t, ctx, 0, ns, shared, 1, false)
	exportService(t, ctx, 0, ns, shared, nil, nil)

	hubClients, err := setup.NewClients(clusters.Broker.Config)
	if err != nil {
		t.Fatal(err)
	}
	cred, err := setup.MemberCredentials(ctx, hubClients, setup.JoinOptions{ClusterID: hostile}, "uid-"+hostile)
	if err != nil {
		t.Fatal(err)
	}
	asHostile := brokerclient.NewForConfigOrDie(cred).BrokerV1alpha1()
	rec, err := asHostile.Clusters(bns).Create(ctx, &brokerv1.Cluster{
		ObjectMeta: metav1.ObjectMeta{Name: hostile, Labels: map[string]string{brokerv1.LabelSourceCluster: hostile}},
		Spec:       brokerv1.ClusterSpec{ClusterID: hostile, Region: "eu"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("mallory writing its own Cluster record: %v", err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		for i := range limit + 2 {
			_ = hub.ExportedServices(bns).Delete(ctx, brokerv1.ExportedServiceName(hostile, ns, svc(i)), metav1.DeleteOptions{})
		}
		_ = hub.Clusters(bns).Delete(ctx, hostile, metav1.DeleteOptions{})
	})
	// svc-0 is the oldest, the shared one the newest.
	for i := range limit + 2 {
		name := svc(i)
		at := metav1.NewTime(rec.CreationTimestamp.Add(time.Duration(i+1) * time.Second))
		if _, err := asHostile.ExportedServices(bns).Create(ctx, &brokerv1.ExportedService{
			ObjectMeta: metav1.ObjectMeta{Name: brokerv1.ExportedServiceName(hostile, ns, name), Labels: map[string]string{
				brokerv1.LabelSourceCluster: hostile, brokerv1.LabelServiceName: name, brokerv1.LabelServiceNamespace: ns}},
			Spec: brokerv1.ExportedServiceSpec{SourceCluster: hostile, ServiceNamespace: ns, ServiceName: name, Type: brokerv1.ClusterSetIP,
				Ports:                   []brokerv1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}},
				ExportCreationTimestamp: at},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatalf("mallory exporting %s: %v", name, err)
		}
	}

	// What c holds: which services are imported (a ServiceImport), from
	// which clusters, and which have a derived Service.
	type held struct {
		clusters map[string][]string
		derived  []string
		capped   map[string]string // the ImportCapped message, by service
	}
	holding := func(i int) (held, error) {
		h := held{clusters: map[string][]string{}, capped: map[string]string{}}
		sis, err := mcs(t, i).MulticlusterV1beta1().ServiceImports(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return h, err
		}
		for _, si := range sis.Items {
			h.clusters[si.Name] = statusClusters(&si)
			if c := meta.FindStatusCondition(si.Status.Conditions, agent.ConditionImportCapped); c != nil {
				h.capped[si.Name] = c.Message
			}
		}
		svcs, err := clusters.Members[i].Client.CoreV1().Services(ns).List(ctx, metav1.ListOptions{LabelSelector: "isthmus.dev/derived-for"})
		if err != nil {
			return h, err
		}
		for _, s := range svcs.Items {
			h.derived = append(h.derived, s.Labels["isthmus.dev/derived-for"])
		}
		slices.Sort(h.derived)
		return h, nil
	}
	want := func(i int, imported map[string][]string, capped ...string) func() error {
		return func() error {
			h, err := holding(i)
			if err != nil {
				return err
			}
			if fmt.Sprint(h.clusters) != fmt.Sprint(imported) {
				return fmt.Errorf("imports %v, want %v", h.clusters, imported)
			}
			var names []string
			for n := range imported {
				names = append(names, n)
			}
			slices.Sort(names)
			if !slices.Equal(h.derived, names) {
				return fmt.Errorf("derived Services for %v, want one for each import %v", h.derived, names)
			}
			for n, msg := range h.capped {
				if !slices.Contains(capped, n) {
					return fmt.Errorf("%s has the ImportCapped condition (%s)", n, msg)
				}
			}
			for _, n := range capped {
				if msg := h.capped[n]; !strings.Contains(msg, "cluster(s) "+hostile) || !strings.Contains(msg, fmt.Sprint(limit)) {
					return fmt.Errorf("%s's ImportCapped condition says %q", n, msg)
				}
			}
			return nil
		}
	}

	left := svc(limit)
	eventually(t, propagation, "c imports mallory's oldest and a's shared one", want(2, imported([]string{"a"}, upTo(limit)...), shared))
	eventually(t, propagation, "c counts 2 of mallory's exports left out", func() error {
		if n := metric(t, 2, "isthmus_agent_imports_capped", `cluster="`+hostile+`"`); n != 2 {
			return fmt.Errorf("isthmus_agent_imports_capped{cluster=%s} = %v", hostile, n)
		}
		return nil
	})
	eventually(t, propagation, "an Event on c's Namespace", func() error {
		evs, err := clusters.Members[2].Client.CoreV1().Events("").List(ctx, metav1.ListOptions{
			FieldSelector: "involvedObject.kind=Namespace,involvedObject.name=" + ns + ",reason=" + agent.ReasonImportCapped})
		if err != nil {
			return err
		}
		// One Event per change: the two may have come in one or two.
		var named []string
		for _, e := range evs.Items {
			for _, n := range []string{left, shared} {
				if strings.Contains(e.Message, "cluster "+hostile) && strings.Contains(e.Message, n) {
					named = append(named, n)
				}
			}
		}
		if !slices.Contains(named, left) || !slices.Contains(named, shared) {
			return fmt.Errorf("%d ImportCapped Events name %v of mallory's, want %s and %s", len(evs.Items), named, left, shared)
		}
		return nil
	})
	eventually(t, propagation, "a, with the default cap, imports all of mallory's", want(0, imported([]string{"a", hostile}, upTo(limit+1)...)))

	// A freed slot goes to the next in rank.
	if err := asHostile.ExportedServices(bns).Delete(ctx, brokerv1.ExportedServiceName(hostile, ns, "svc-1"), metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, propagation, "the next in rank takes svc-1's slot in c", want(2, imported([]string{"a"}, upTo(limit+1, 1)...), shared))
	if n := metric(t, 2, "isthmus_agent_imports_capped", `cluster="`+hostile+`"`); n != 1 {
		t.Errorf("isthmus_agent_imports_capped{cluster=%s} = %v after one slot freed, want 1", hostile, n)
	}
	if err := asHostile.ExportedServices(bns).Delete(ctx, brokerv1.ExportedServiceName(hostile, ns, "svc-2"), metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, propagation, "the shared one takes mallory back in c and its condition clears",
		want(2, imported([]string{"a", hostile}, upTo(limit+1, 1, 2)...)))
	eventually(t, propagation, "c counts none left out", func() error {
		if n := metric(t, 2, "isthmus_agent_imports_capped", `cluster="`+hostile+`"`); n != 0 {
			return fmt.Errorf("isthmus_agent_imports_capped{cluster=%s} = %v", hostile, n)
		}
		return nil
	})
}
