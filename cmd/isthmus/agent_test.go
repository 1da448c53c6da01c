package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/setup"
	"github.com/isthmus-dev/isthmus/test/childproc"
	"github.com/isthmus-dev/isthmus/test/cluster"
)

// The role tests share one clusterset: a broker and members a (region
// eu), b (us) and c (eu), joined with isthmusctl's setup and each running
// `isthmus agent` in this process with its own member credentials. The
// agent's own behaviour is tested in mcs/agent; here the agent role runs
// beside the roles under test.
var clusters *cluster.Clusterset

func TestMain(m *testing.M) {
	if childproc.InChild() {
		// A logging test re-run alone in a process of its own (logging_test.go).
		os.Exit(m.Run())
	}
	cluster.Main(m, cluster.Options{Broker: true, Members: 3,
		Localities: []cluster.Locality{{Region: "eu", Zone: "eu-1"}, {Region: "us", Zone: "us-1"}, {Region: "eu", Zone: "eu-2"}},
		BeforeStop: stopAllAgents}, &clusters)
}

var (
	ids     = []string{"a", "b", "c"}
	regions = []string{"eu", "us", "eu"}
)

const (
	propagation   = 30 * time.Second
	leaseDuration = 2 * time.Second
	withdrawAfter = 8 * time.Second
)

type runningAgent struct {
	cancel  context.CancelFunc
	done    chan error
	metrics string
}

var (
	setupOnce sync.Once
	setupErr  error
	agentsMu  sync.Mutex
	agents    = map[int]*runningAgent{}
)

// clusterset installs the broker, joins the members and starts an agent
// in each, once for all tests.
func clusterset(t *testing.T) {
	t.Helper()
	setupOnce.Do(func() {
		ctx := context.Background()
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
			if _, setupErr = setup.Join(ctx, hub, member, setup.JoinOptions{ClusterID: ids[i],
				PodCIDRs: []string{m.PodCIDR.String()}, ServiceCIDRs: []string{m.ServiceCIDR.String()}}, &out); setupErr != nil {
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

// startAgent runs `isthmus agent` for member i, with any extra flags, and
// waits until it is ready.
func startAgent(i int, extra ...string) error { return startReplica(i, i, extra...) }

// startReplica runs an agent replica for member i, known as slot.
func startReplica(slot, i int, extra ...string) error {
	m := clusters.Members[i]
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	ra := &runningAgent{cancel: cancel, done: make(chan error, 1), metrics: addr}
	args := []string{
		"--kubeconfig", m.Kubeconfig, "--region", regions[i],
		"--pod-cidrs", m.PodCIDR.String(), "--service-cidrs", m.ServiceCIDR.String(),
		"--lease-duration", leaseDuration.String(), "--withdraw-after", withdrawAfter.String(),
		"--metrics-addr", addr,
	}
	args = append(args, extra...)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("member", ids[i])
	go func() { ra.done <- runRoles(ctx, "agent", []role{agentRole()}, args, log, io.Discard) }()
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
		if resp, err := http.Get("http://" + addr + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("agent %s not ready within a minute", ids[i])
}

// stopAllAgents ends every running agent before the clusterset stops.
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
