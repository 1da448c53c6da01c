package agent_test

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/isthmus-dev/isthmus/mcs/agent"
	brokerclient "github.com/isthmus-dev/isthmus/mcs/api/broker/generated/clientset/versioned"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/setup"
	"github.com/isthmus-dev/isthmus/test/cluster"
)

// The agent's behaviour tests share one clusterset: a broker and members a
// (region eu), b (us) and c (eu), joined with isthmusctl's setup and each
// running an agent in this process, built by agent.New with its own member
// credentials. The clusterset starts with the first test that asks for it,
// so the package's pure tests run without the Kubernetes binaries.
var clusters *cluster.Clusterset

func TestMain(m *testing.M) {
	flag.Parse()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sigs
		stopClusterset()
		os.Exit(1)
	}()
	code := m.Run()
	stopClusterset()
	os.Exit(code)
}

var (
	ids     = []string{"a", "b", "c"}
	regions = []string{"eu", "us", "eu"}
)

const (
	leaseDuration = 2 * time.Second
	withdrawAfter = 8 * time.Second
)

type runningAgent struct {
	cancel context.CancelFunc
	done   chan error
	reg    *prometheus.Registry
}

var (
	setupOnce sync.Once
	setupErr  error
	stopOnce  sync.Once
	agentsMu  sync.Mutex
	agents    = map[int]*runningAgent{}
	replicas  int // names each replica in the leader election
)

// deadlineMargin is how long before the test binary's deadline the
// clusterset stops itself, so that a timed-out run leaves nothing behind.
const deadlineMargin = 20 * time.Second

// clusterset starts the clusterset, installs the broker, joins the members
// and starts an agent in each, once for all tests.
func clusterset(t *testing.T) {
	t.Helper()
	setupOnce.Do(func() {
		ctx := context.Background()
		cs, err := cluster.New(ctx, cluster.Options{Broker: true, Members: 3,
			Localities: []cluster.Locality{{Region: "eu", Zone: "eu-1"}, {Region: "us", Zone: "us-1"}, {Region: "eu", Zone: "eu-2"}},
			Log:        slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
		if err != nil {
			setupErr = fmt.Errorf("starting the clusterset: %w", err)
			return
		}
		agentsMu.Lock()
		clusters = cs
		agentsMu.Unlock()
		if deadline, ok := t.Deadline(); ok {
			time.AfterFunc(time.Until(deadline.Add(-deadlineMargin)), stopClusterset)
		}
		hub, err := setup.NewClients(clusters.Broker.Config)
		if err != nil {
			setupErr = err
			return
		}
		var out bytes.Buffer
		if setupErr = setup.InstallBroker(ctx, hub, setup.BrokerOptions{}, &out); setupErr != nil {
			return
		}
		for i, m := range clusters.Members {
			member, err := setup.NewClients(m.Config)
			if err != nil {
				setupErr = err
				return
			}
			if _, setupErr = setup.Join(ctx, hub, member, setup.JoinOptions{ClusterID: ids[i]}, &out); setupErr != nil {
				return
			}
		}
		for i := range clusters.Members {
			if setupErr = startAgent(i); setupErr != nil {
				return
			}
		}
	})
	if setupErr != nil {
		t.Fatalf("setting up the clusterset: %v", setupErr)
	}
}

// stopClusterset stops every agent, then the clusterset, if it started.
func stopClusterset() {
	stopOnce.Do(func() {
		stopAllAgents()
		agentsMu.Lock()
		cs := clusters
		agentsMu.Unlock()
		if cs != nil {
			cs.Stop()
		}
	})
}

// withConfig changes an agent's configuration before it starts.
type withConfig func(*agent.Config)

// startAgent runs member i's agent, with any configuration changes, and
// waits until it is ready.
func startAgent(i int, with ...withConfig) error { return startReplica(i, i, with...) }

// clientConfig is cfg with the request rate the isthmus command sets
// (client-go's default of 5 per second throttles a clusterset).
func clientConfig(cfg *rest.Config) *rest.Config {
	cfg = rest.CopyConfig(cfg)
	cfg.QPS, cfg.Burst = 50, 100
	return cfg
}

// agentConfig builds member i's agent configuration as the agent role
// does: its own clients, the id from its ClusterProperty, the broker from
// the credential join stored in it, and leader election among replicas.
func agentConfig(ctx context.Context, i int) (agent.Config, error) {
	m := clusters.Members[i]
	cfg := clientConfig(m.Config)
	local, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return agent.Config{}, err
	}
	localMCS, err := mcsclient.NewForConfig(cfg)
	if err != nil {
		return agent.Config{}, err
	}
	localDyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return agent.Config{}, err
	}
	id, err := agent.ClusterID(ctx, localDyn, "")
	if err != nil {
		return agent.Config{}, err
	}
	brokerCfg, ns, err := setup.BrokerConfig(ctx, local, "")
	if err != nil {
		return agent.Config{}, err
	}
	brokerCfg = clientConfig(brokerCfg)
	broker, err := kubernetes.NewForConfig(brokerCfg)
	if err != nil {
		return agent.Config{}, err
	}
	brokerClient, err := brokerclient.NewForConfig(brokerCfg)
	if err != nil {
		return agent.Config{}, err
	}
	agentsMu.Lock()
	replicas++
	identity := fmt.Sprintf("%s-%d", id, replicas)
	agentsMu.Unlock()
	return agent.Config{
		ClusterID: id, BrokerNamespace: ns, Region: regions[i], Version: "test",
		PodCIDRs: []string{m.PodCIDR.String()}, ServiceCIDRs: []string{m.ServiceCIDR.String()},
		Local: local, LocalMCS: localMCS, Broker: broker, BrokerClient: brokerClient, BrokerDynamic: dynamic.NewForConfigOrDie(brokerCfg),
		LeaseDuration: leaseDuration, WithdrawAfter: withdrawAfter,
		LeaderElectionNamespace: setup.MemberNamespace, Identity: identity,
	}, nil
}

// startReplica runs an agent replica for member i, known as slot.
func startReplica(slot, i int, with ...withConfig) error {
	ctx, cancel := context.WithCancel(context.Background())
	cfg, err := agentConfig(ctx, i)
	if err != nil {
		cancel()
		return fmt.Errorf("configuring agent %s: %w", ids[i], err)
	}
	reg := prometheus.NewRegistry()
	cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("member", ids[i])
	cfg.Registry = reg
	for _, w := range with {
		w(&cfg)
	}
	a, err := agent.New(cfg)
	if err != nil {
		cancel()
		return fmt.Errorf("agent %s: %w", ids[i], err)
	}
	ra := &runningAgent{cancel: cancel, done: make(chan error, 1), reg: reg}
	go func() {
		err := a.Run(ctx)
		if errors.Is(err, context.Canceled) {
			err = nil
		}
		ra.done <- err
	}()
	agentsMu.Lock()
	agents[slot] = ra
	agentsMu.Unlock()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		select {
		case err := <-ra.done:
			return fmt.Errorf("agent %s exited: %v", ids[i], err)
		default:
		}
		if a.Ready() == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("agent %s not ready within a minute", ids[i])
}

// stopAllAgents ends every running agent.
func stopAllAgents() {
	agentsMu.Lock()
	running := agents
	agents = map[int]*runningAgent{}
	agentsMu.Unlock()
	for _, ra := range running {
		ra.cancel()
		<-ra.done
	}
}

func stopAgent(t *testing.T, i int) {
	t.Helper()
	agentsMu.Lock()
	ra := agents[i]
	delete(agents, i)
	agentsMu.Unlock()
	ra.cancel()
	select {
	case err := <-ra.done:
		if err != nil {
			t.Errorf("agent %s stopped with: %v", ids[i], err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("agent %s did not stop", ids[i])
	}
}

// metric reads one sample of an agent's metrics, summing the series whose
// exposition line (name{labels} value) starts with prefix and contains
// every filter.
func metric(t *testing.T, i int, prefix string, filters ...string) float64 {
	t.Helper()
	agentsMu.Lock()
	reg := agents[i].reg
	agentsMu.Unlock()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, f := range families {
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			line := f.GetName()
			if len(labels) > 0 {
				line += "{" + strings.Join(labels, ",") + "}"
			}
			v := m.GetGauge().GetValue() + m.GetCounter().GetValue() + m.GetUntyped().GetValue()
			line += fmt.Sprintf(" %v", v)
			if !strings.HasPrefix(line, prefix) {
				continue
			}
			ok := true
			for _, flt := range filters {
				ok = ok && strings.Contains(line, flt)
			}
			if ok {
				sum += v
			}
		}
	}
	return sum
}

// wantNoWrites checks, a few seconds after agent i started, that it has
// written nothing to its cluster or the broker but its heartbeat.
func wantNoWrites(t *testing.T, i int) {
	t.Helper()
	time.Sleep(3 * time.Second)
	for _, target := range []string{`target="broker"`, `target="local"`} {
		if n := metric(t, i, "isthmus_agent_writes_total", target); n != 0 {
			var verbs []string
			for _, verb := range []string{"apply", "update", "status", "delete", "create"} {
				if n := metric(t, i, "isthmus_agent_writes_total", target, `verb="`+verb+`"`); n != 0 {
					verbs = append(verbs, fmt.Sprintf("%s %v", verb, n))
				}
			}
			t.Errorf("restarted agent made %v writes (%s: %s) with nothing changed", n, target, strings.Join(verbs, ", "))
		}
	}
}

func mcs(t *testing.T, i int) mcsclient.Interface {
	t.Helper()
	c, err := mcsclient.NewForConfig(clusters.Members[i].Config)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls check until it passes or the timeout ends.
func eventually(t *testing.T, timeout time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still not true after %v: %v", what, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// always checks that check keeps passing for a while.
func always(t *testing.T, d time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if err := check(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func namespace(t *testing.T, ctx context.Context, ns string, members ...int) {
	t.Helper()
	for _, i := range members {
		_, err := clusters.Members[i].Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
}

type port struct {
	name     string
	protocol corev1.Protocol
	port     int32
}

// workload makes a Deployment and a Service the way users do.
func workload(t *testing.T, ctx context.Context, i int, ns, name string, replicas int32, headless bool, ports ...port) {
	t.Helper()
	if len(ports) == 0 {
		ports = []port{{"http", corev1.ProtocolTCP, 80}}
	}
	labels := map[string]string{"app": name}
	var cports []corev1.ContainerPort
	var sports []corev1.ServicePort
	for _, p := range ports {
		cports = append(cports, corev1.ContainerPort{Name: p.name, ContainerPort: 8000 + p.port, Protocol: p.protocol})
		sports = append(sports, corev1.ServicePort{Name: p.name, Port: p.port, Protocol: p.protocol, TargetPort: intstr.FromString(p.name)})
	}
	c := clusters.Members[i].Client
	_, err := c.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: name, Image: "registry.example/" + name, Ports: cports}}},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"team": "web"}},
		Spec: corev1.ServiceSpec{Selector: labels, Ports: sports}}
	if headless {
		svc.Spec.ClusterIP = corev1.ClusterIPNone
	}
	if _, err := c.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func scale(t *testing.T, ctx context.Context, i int, ns, name string, replicas int32) {
	t.Helper()
	s, err := clusters.Members[i].Client.AppsV1().Deployments(ns).GetScale(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Spec.Replicas = replicas
	if _, err := clusters.Members[i].Client.AppsV1().Deployments(ns).UpdateScale(ctx, name, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func exportService(t *testing.T, ctx context.Context, i int, ns, name string, annotations map[string]string, exportedLabels map[string]string) {
	t.Helper()
	_, err := mcs(t, i).MulticlusterV1beta1().ServiceExports(ns).Create(ctx, &mcsv1beta1.ServiceExport{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Annotations: annotations, Labels: map[string]string{"not": "exported"}},
		Spec:       mcsv1beta1.ServiceExportSpec{ExportedLabels: exportedLabels},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

func unexport(t *testing.T, ctx context.Context, i int, ns, name string) {
	t.Helper()
	if err := mcs(t, i).MulticlusterV1beta1().ServiceExports(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}

// condition returns a ServiceExport's condition of one type, or an error.
func condition(ctx context.Context, t *testing.T, i int, ns, name string, typ mcsv1beta1.ServiceExportConditionType) (*metav1.Condition, error) {
	se, err := mcs(t, i).MulticlusterV1beta1().ServiceExports(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	c := meta.FindStatusCondition(se.Status.Conditions, string(typ))
	if c == nil {
		return nil, fmt.Errorf("no %s condition yet: %v", typ, se.Status.Conditions)
	}
	return c, nil
}

func wantCondition(ctx context.Context, t *testing.T, i int, ns, name string, typ mcsv1beta1.ServiceExportConditionType, status metav1.ConditionStatus, reason string, msgParts ...string) func() error {
	return func() error {
		c, err := condition(ctx, t, i, ns, name, typ)
		if err != nil {
			return err
		}
		if c.Status != status || c.Reason != reason {
			return fmt.Errorf("%s=%s/%s (%s), want %s/%s", typ, c.Status, c.Reason, c.Message, status, reason)
		}
		for _, p := range msgParts {
			if !strings.Contains(c.Message, p) {
				return fmt.Errorf("%s message %q lacks %q", typ, c.Message, p)
			}
		}
		return nil
	}
}

// importView is what one member holds for an import.
type importView struct {
	si        *mcsv1beta1.ServiceImport
	endpoints map[string][]string // MCS slices: source cluster -> addresses
	derived   []string            // clusters in the derived Service's slices
	families  map[string][]discoveryv1.AddressType
}

func viewImport(ctx context.Context, t *testing.T, i int, ns, name string) (*importView, error) {
	si, err := mcs(t, i).MulticlusterV1beta1().ServiceImports(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	v := &importView{si: si, endpoints: map[string][]string{}, families: map[string][]discoveryv1.AddressType{}}
	list, err := clusters.Members[i].Client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	derivedName := ""
	for _, s := range list.Items {
		switch {
		case s.Labels[mcsv1beta1.LabelServiceName] == name:
			c := s.Labels[mcsv1beta1.LabelSourceCluster]
			if s.Labels[discoveryv1.LabelManagedBy] != brokerv1.ManagedBy || s.Labels[discoveryv1.LabelServiceName] != "" {
				return nil, fmt.Errorf("MCS slice %s has labels %v", s.Name, s.Labels)
			}
			for _, e := range s.Endpoints {
				if e.Conditions.Ready != nil && *e.Conditions.Ready {
					v.endpoints[c] = append(v.endpoints[c], e.Addresses...)
				}
			}
			v.families[c] = append(v.families[c], s.AddressType)
		case s.Labels["isthmus.dev/derived-for"] == name:
			derivedName = s.Labels[discoveryv1.LabelServiceName]
			if !slices.Contains(v.derived, s.Labels[mcsv1beta1.LabelSourceCluster]) {
				v.derived = append(v.derived, s.Labels[mcsv1beta1.LabelSourceCluster])
			}
		}
	}
	sort.Strings(v.derived)
	for c := range v.endpoints {
		sort.Strings(v.endpoints[c])
	}
	if derivedName != "" {
		if _, err := clusters.Members[i].Client.CoreV1().Services(ns).Get(ctx, derivedName, metav1.GetOptions{}); err != nil {
			return nil, fmt.Errorf("derived Service %s: %w", derivedName, err)
		}
	}
	return v, nil
}

func podIPs(ctx context.Context, t *testing.T, i int, ns, app string) []string {
	pods, err := clusters.Members[i].Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
	if err != nil {
		t.Fatal(err)
	}
	var ips []string
	for _, p := range pods.Items {
		if p.Status.PodIP != "" && p.DeletionTimestamp == nil {
			ips = append(ips, p.Status.PodIP)
		}
	}
	sort.Strings(ips)
	return ips
}

func statusClusters(si *mcsv1beta1.ServiceImport) []string {
	var out []string
	for _, c := range si.Status.Clusters {
		out = append(out, c.Cluster)
	}
	return out
}

func inCIDR(ips []string, p netip.Prefix) bool {
	for _, ip := range ips {
		if !p.Contains(netip.MustParseAddr(ip)) {
			return false
		}
	}
	return len(ips) > 0
}

// describeSlices lists, for a failure message, the broker's EndpointSlices
// and member a's slices in ns with their endpoints' readiness.
func describeSlices(ctx context.Context, ns string) string {
	var out []string
	bs, _ := clusters.Broker.Client.DiscoveryV1().EndpointSlices(brokerv1.DefaultBrokerNamespace).List(ctx, metav1.ListOptions{})
	for _, s := range bs.Items {
		out = append(out, "broker:"+s.Name)
	}
	ls, _ := clusters.Members[0].Client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{})
	for _, s := range ls.Items {
		var ready []string
		for _, e := range s.Endpoints {
			if e.Conditions.Ready != nil {
				ready = append(ready, fmt.Sprint(e.Addresses, *e.Conditions.Ready))
			}
		}
		out = append(out, fmt.Sprintf("a:%s%v", s.Name, ready))
	}
	return "slices " + strings.Join(out, " ")
}

// describeMembers reports, for a failure message, each member's node
// conditions and its pods in ns with their conditions.
func describeMembers(ctx context.Context, ns string) string {
	var out []string
	for i, m := range clusters.Members {
		n, _ := m.Client.CoreV1().Nodes().Get(ctx, cluster.NodeName, metav1.GetOptions{})
		pods, _ := m.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		var ps []string
		for _, p := range pods.Items {
			ps = append(ps, fmt.Sprintf("%s:%s:%v", p.Name, p.Status.Phase, p.Status.Conditions))
		}
		var nc any
		if n != nil {
			nc = n.Status.Conditions
		}
		out = append(out, fmt.Sprintf("%s node %v pods %v", ids[i], nc, ps))
	}
	return strings.Join(out, "; ")
}
