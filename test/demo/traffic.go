package demo

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/test/demo/pod"
	"github.com/isthmus-dev/isthmus/test/netnstest"
)

const echoReplicas = 2

// deployEcho creates the demo namespace everywhere (an import needs it),
// and in a and b the echo Deployment, its Service and ServiceExport; it
// starts each echo member's listener and keeps the pod namespace's
// addresses in step with the pods.
func (w *World) deployEcho(ctx context.Context) error {
	for _, m := range w.Members {
		c := m.Cluster.Client
		if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: Namespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("%s: creating namespace %s: %w", m.ID, Namespace, err)
		}
		if !m.Echo {
			continue
		}
		labels := map[string]string{"app": Service}
		dep := &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Name: Service, Namespace: Namespace},
			Spec: appsv1.DeploymentSpec{
				Replicas: ptr(int32(echoReplicas)),
				Selector: &metav1.LabelSelector{MatchLabels: labels},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: labels},
					Spec: corev1.PodSpec{
						NodeSelector: map[string]string{"type": "kwok"},
						Containers: []corev1.Container{{Name: "echo", Image: "isthmus.dev/demo-echo",
							Ports: []corev1.ContainerPort{{Name: "tcp", ContainerPort: echoPort}}}},
					},
				},
			},
		}
		if _, err := c.AppsV1().Deployments(Namespace).Create(ctx, dep, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("%s: creating Deployment: %w", m.ID, err)
		}
		// Proxyless gRPC clients are to speak mTLS to the pods: the
		// ServiceExport exports the annotation, the imports carry it.
		upstreamTLS := map[string]string{brokerv1.AnnotationUpstreamTLS: "mtls"}
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: Service, Namespace: Namespace, Annotations: upstreamTLS},
			Spec: corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{Name: "tcp", Port: servicePort,
				Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromString("tcp")}}},
		}
		if _, err := c.CoreV1().Services(Namespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("%s: creating Service: %w", m.ID, err)
		}
		mc, err := mcsclient.NewForConfig(m.Cluster.Config)
		if err != nil {
			return err
		}
		se := &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Name: Service, Namespace: Namespace},
			Spec: mcsv1beta1.ServiceExportSpec{ExportedAnnotations: upstreamTLS}}
		if _, err := mc.MulticlusterV1beta1().ServiceExports(Namespace).Create(ctx, se, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("%s: creating ServiceExport: %w", m.ID, err)
		}
		if err := m.serveEcho(); err != nil {
			return err
		}
		syncCtx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); m.syncPodIPs(syncCtx) }()
		w.addStop(func() { cancel(); <-done })
	}
	return nil
}

func ptr[T any](v T) *T { return &v }

// serveEcho listens in the member's pod namespace on every address: a
// connection that starts with a TLS handshake is gRPC (see route); any
// other gets one line naming the cluster and the pod IP it reached.
func (m *Member) serveEcho() error {
	var l net.Listener
	err := netnstest.Run(m.Pods, func() (err error) {
		l, err = net.Listen("tcp", ":"+strconv.Itoa(echoPort))
		return err
	})
	if err != nil {
		return fmt.Errorf("%s: serving echo: %w", m.ID, err)
	}
	m.w.addStop(m.serveOn(l))
	return nil
}

// syncPodIPs keeps the pod namespace's addresses equal to the IPs of the
// member's running echo pods, as a kubelet and CNI would.
func (m *Member) syncPodIPs(ctx context.Context) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		pods, err := m.Cluster.Client.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app=" + Service})
		if err == nil {
			want := map[netip.Addr]bool{}
			for _, p := range pods.Items {
				if ip, err := netip.ParseAddr(p.Status.PodIP); err == nil && p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
					want[ip] = true
				}
			}
			m.mu.Lock()
			for ip := range want {
				if !m.podIPs[ip] {
					if _, err := netnstest.Sh("ip", "-n", m.Pods, "addr", "add", ip.String()+"/32", "dev", "eth0"); err == nil {
						m.podIPs[ip] = true
					}
				}
			}
			for ip := range m.podIPs {
				if !want[ip] {
					if _, err := netnstest.Sh("ip", "-n", m.Pods, "addr", "del", ip.String()+"/32", "dev", "eth0"); err == nil {
						delete(m.podIPs, ip)
					}
				}
			}
			m.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// ScaleEcho sets the member's echo replicas.
func (m *Member) ScaleEcho(ctx context.Context, n int32) error {
	s, err := m.Cluster.Client.AppsV1().Deployments(Namespace).GetScale(ctx, Service, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("%s: reading the echo scale: %w", m.ID, err)
	}
	s.Spec.Replicas = n
	_, err = m.Cluster.Client.AppsV1().Deployments(Namespace).UpdateScale(ctx, Service, s, metav1.UpdateOptions{})
	if err != nil {
		return fmt.Errorf("%s: scaling echo to %d: %w", m.ID, n, err)
	}
	return nil
}

// Request connects from the member's client pod to addr and returns the
// cluster that answered.
func (m *Member) Request(addr netip.AddrPort, timeout time.Duration) (string, error) {
	if m.w.OnNodes() {
		// kubectl exec into the client pod: the request leaves from the
		// pod's own network.
		ctx, cancel := context.WithTimeout(context.Background(), timeout+20*time.Second)
		defer cancel()
		out, err := m.execClient(ctx, "request", "--target", addr.String(), "--timeout", timeout.String())
		if err != nil {
			return "", err
		}
		cluster, _, _ := strings.Cut(strings.TrimSpace(out), " ")
		return cluster, nil
	}
	var conn net.Conn
	err := netnstest.Run(m.Client, func() (err error) {
		conn, err = net.DialTimeout("tcp", addr.String(), timeout)
		return err
	})
	if err != nil {
		return "", err
	}
	defer conn.Close()
	cluster, _, err := pod.Ask(conn, timeout)
	return cluster, err
}

// sample is one request of a load loop.
type sample struct {
	at     time.Time
	served string // cluster id, empty on failure
	err    error
	// A gRPC request's: the pod IP that answered, the SPIFFE id the
	// server presented (as the client verified it) and the one the server
	// saw for the client.
	pod, serverID, clientID string
	took                    time.Duration // a gRPC request's, until answered
}

// load sends a request every interval from a member's client and records
// each outcome, until stopped.
type load struct {
	mu      sync.Mutex
	samples []sample
	broken  error // the load cannot run at all
	cancel  func()
	done    chan struct{}
}

func (l *load) add(s sample) {
	l.mu.Lock()
	l.samples = append(l.samples, s)
	l.mu.Unlock()
}

func (l *load) fail(err error) {
	l.mu.Lock()
	l.broken = err
	l.mu.Unlock()
}

const (
	loadInterval   = 50 * time.Millisecond
	requestTimeout = 300 * time.Millisecond
)

func (m *Member) startLoad(addr netip.AddrPort) *load {
	if m.w.OnNodes() {
		// The member's client pod sends its requests all along, to the
		// name (its own resolver gives addr); read them from its log.
		l, err := m.followPod(context.Background(), clientApp, time.Now())
		if err != nil {
			l = &load{cancel: func() {}, done: make(chan struct{})}
			close(l.done)
			l.fail(err)
		}
		return l
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		t := time.NewTicker(loadInterval)
		defer t.Stop()
		for {
			at := time.Now()
			served, err := m.Request(addr, requestTimeout)
			l.add(sample{at: at, served: served, err: err})
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return l
}

func (l *load) stop() []sample {
	l.cancel()
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.samples
}

// since returns the samples taken from t on.
func (l *load) since(t time.Time) []sample {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []sample
	for _, s := range l.samples {
		if !s.at.Before(t) {
			out = append(out, s)
		}
	}
	return out
}

// waitServedBy waits until n requests in a row from t on were served by
// cluster id, and returns when the first of them was sent.
func (l *load) waitServedBy(ctx context.Context, t time.Time, id string, n int) (time.Time, error) {
	for {
		l.mu.Lock()
		broken := l.broken
		l.mu.Unlock()
		if broken != nil {
			return time.Time{}, broken
		}
		var run int
		var first time.Time
		for _, s := range l.since(t) {
			if s.served == id {
				if run == 0 {
					first = s.at
				}
				run++
				if run == n {
					return first, nil
				}
			} else {
				run = 0
			}
		}
		select {
		case <-ctx.Done():
			last := "no request"
			if ss := l.since(t); len(ss) > 0 {
				s := ss[len(ss)-1]
				last = "served by " + s.served
				if s.err != nil {
					last = s.err.Error()
				}
			}
			return time.Time{}, fmt.Errorf("not served by %s (%d in a row): last request: %s: %w", id, n, last, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// failures counts the failed requests among samples in [from, to).
func failures(samples []sample, from, to time.Time) (failed, total int) {
	for _, s := range samples {
		if s.at.Before(from) || !s.at.Before(to) {
			continue
		}
		total++
		if s.err != nil {
			failed++
		}
	}
	return failed, total
}

var errNoImport = errors.New("no ServiceImport with an IP yet")
