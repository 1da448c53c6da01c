package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/isthmus-dev/isthmus/cmd/internal/kube"
	"github.com/isthmus-dev/isthmus/mcs/agent"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/election"
	"github.com/isthmus-dev/isthmus/mcs/setup"
	"github.com/isthmus-dev/isthmus/test/cluster"
	"github.com/isthmus-dev/isthmus/tunnel"
	xdsidentity "github.com/isthmus-dev/isthmus/xds/identity"

	"github.com/isthmus-dev/isthmus/test/helmtest"
)

// applyChartRBAC really applies the ServiceAccounts, RBAC and admission
// policies the chart renders in gateway mode (and with the values set) to
// member c, and removes them when the test ends.
func applyChartRBAC(t *testing.T, ctx context.Context, set ...string) {
	t.Helper()
	helmtest.ApplyIdentities(t, ctx, clusters.Members[chartMember].Config, renderChart(t, append([]string{"dataplane=gateway"}, set...)...))
}

// roleKubeconfig writes a kubeconfig for member c that authenticates as
// the chart ServiceAccount sa with a token from the TokenRequest API, as
// the kubelet would mount it.
func roleKubeconfig(t *testing.T, ctx context.Context, sa string) string {
	t.Helper()
	m := clusters.Members[chartMember]
	tok, err := m.Client.CoreV1().ServiceAccounts("isthmus-system").CreateToken(ctx, sa,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptrTo(int64(3600))}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("a token of %s: %v", sa, err)
	}
	cfg := clientcmdapi.NewConfig()
	apiserver := &clientcmdapi.Cluster{Server: m.Config.Host, CertificateAuthorityData: m.Config.CAData}
	if len(m.Config.CAData) == 0 {
		apiserver.CertificateAuthority = m.Config.CAFile
	}
	cfg.Clusters["c"] = apiserver
	cfg.AuthInfos[sa] = &clientcmdapi.AuthInfo{Token: tok.Status.Token}
	cfg.Contexts[sa] = &clientcmdapi.Context{Cluster: "c", AuthInfo: sa}
	cfg.CurrentContext = sa
	path := filepath.Join(t.TempDir(), sa+".kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// logBuffer collects a role's log, to look for refusals in it.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// runWithChartIdentity runs `isthmus <role>` with the chart
// ServiceAccount's token until the test ends, and waits for /readyz. At
// the end its log must show no request the apiserver forbade.
func runWithChartIdentity(t *testing.T, ctx context.Context, role string, args ...string) (metrics string, stop func()) {
	t.Helper()
	r := startRole(t, role, roleKubeconfig(t, ctx, "isthmus-"+role), args...)
	stop = func() {
		r.stop()
		if l := r.logs.String(); strings.Contains(strings.ToLower(l), "forbidden") {
			t.Errorf("isthmus %s with its chart identity was refused something:\n%s", role, l)
		}
	}
	eventually(t, time.Minute, "isthmus "+role+" ready with its chart identity", r.ready)
	return r.metrics, stop
}

// runningRole is `isthmus <role>` run in this process by startRole.
type runningRole struct {
	role, metrics string
	logs          *logBuffer
	done          chan error
	stop          func()
}

// startRole runs `isthmus <role>` with kubeconfig until the test ends or
// stop is called, which fails the test if it returned an error.
func startRole(t *testing.T, role, kubeconfig string, args ...string) *runningRole {
	t.Helper()
	r := &runningRole{role: role, metrics: freePort(t), logs: &logBuffer{}, done: make(chan error, 1)}
	args = append([]string{role, "--kubeconfig", kubeconfig, "--metrics-addr", r.metrics}, args...)
	if role == setup.RoleXDS || role == setup.RoleTunnel {
		// As the chart runs it: with the role's own broker identity.
		args = append(args, "--broker-secret", setup.RoleSecret(setup.BrokerSecret, role))
	}
	log := slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug})).With("role", role)
	rctx, cancel := context.WithCancel(context.Background())
	go func() { r.done <- run(rctx, args, log, io.Discard, io.Discard) }()
	var once sync.Once
	r.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-r.done; err != nil {
				t.Errorf("isthmus %s: %v", role, err)
			}
		})
	}
	t.Cleanup(r.stop)
	return r
}

// ready is nil once /readyz passes; an error saying why not, or that the
// role exited, until then.
func (r *runningRole) ready() error {
	select {
	case err := <-r.done:
		r.done <- err
		return fmt.Errorf("exited: %v\n%s", err, r.logs.String())
	default:
	}
	if code, body := get("http://" + r.metrics + "/readyz"); code != http.StatusOK {
		return fmt.Errorf("readyz %d: %s", code, body)
	}
	return nil
}

// writeClusterCA stores an intermediate CA for c in isthmus-system/isthmus-ca,
// as isthmusctl join does with certificates, until the test ends, and
// returns the trust bundle.
func writeClusterCA(t *testing.T, ctx context.Context, m *cluster.Cluster) []byte {
	t.Helper()
	root, err := xdsidentity.NewRoot(brokerv1.DefaultClustersetDomain, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	inter, err := root.IssueIntermediate(ids[chartMember], 12*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, key, bundle, err := inter.PEM()
	if err != nil {
		t.Fatal(err)
	}
	secrets := m.Client.CoreV1().Secrets(brokerv1.MemberNamespace)
	if _, err := secrets.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: brokerv1.IntermediateCASecret},
		Data:       map[string][]byte{xdsidentity.CertFile: cert, xdsidentity.KeyFile: key, xdsidentity.CAFile: bundle},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = secrets.Delete(context.Background(), brokerv1.IntermediateCASecret, metav1.DeleteOptions{})
	})
	return bundle
}

// TestChartRolesRunWithTheirIdentities: the least privilege is enough.
// The agent, dns and xds roles run against member c with tokens of their
// chart ServiceAccounts (the agent in place of the test's own agent of c)
// and do their work: the agent exports a Service, imports it and
// withdraws it; the resolver answers for the import; the xDS server
// issues the gateway's and its own certificate from the CA Secret, serves
// ADS over TLS, checks client tokens with TokenReview, watches the gateway
// Service's pods and takes a node with the chart's gateway bootstrap for
// a gateway (refusing it, as it connects from no gateway pod).
func TestChartRolesRunWithTheirIdentities(t *testing.T) {
	clusterset(t)
	ctx := ctxFor(t, 4*time.Minute)
	m := clusters.Members[chartMember]
	applyChartRBAC(t, ctx)
	bundle := writeClusterCA(t, ctx, m)

	stopAgent(t, chartMember)
	t.Cleanup(func() {
		if err := startAgent(chartMember); err != nil {
			t.Errorf("restarting the test's agent of c: %v", err)
		}
	})
	_, stopChartAgent := runWithChartIdentity(t, ctx, "agent", "--region", regions[chartMember],
		"--pod-cidrs", m.PodCIDR.String(), "--service-cidrs", m.ServiceCIDR.String(),
		"--lease-duration", leaseDuration.String(), "--withdraw-after", withdrawAfter.String())
	dnsAddr, adsAddr := freePort(t), freePort(t)
	_, stopDNS := runWithChartIdentity(t, ctx, "dns", "--listen", dnsAddr, "--udp-sockets", "1")
	defer stopDNS()
	// Over TLS as the chart runs it (--tls always), for a name this test
	// can dial on loopback.
	xdsMetrics, stopXDS := runWithChartIdentity(t, ctx, "xds", "--listen", adsAddr, "--region", regions[chartMember], "--tls", "always", "--server-names", "localhost")
	defer stopXDS()

	ns := "chartrbac"
	namespace(t, ctx, ns, chartMember)
	workload(t, ctx, chartMember, ns, "web", 1, false)
	exportService(t, ctx, chartMember, ns, "web", nil, nil)
	eventually(t, propagation, "exported by the chart-identity agent", wantCondition(ctx, t, chartMember, ns, "web", mcsv1beta1.ServiceExportConditionReady, metav1.ConditionTrue, "Exported"))
	eventually(t, propagation, "imported in c by the chart-identity agent", func() error {
		v, err := viewImport(ctx, t, chartMember, ns, "web")
		if err == nil && len(v.derived) == 0 {
			err = errors.New("the derived Service has no endpoints yet")
		}
		return err
	})
	checkChartDNS(t, ctx, dnsAddr, ns)
	checkChartGatewayNode(t, ctx, "localhost:"+adsAddr[strings.LastIndex(adsAddr, ":")+1:], xdsMetrics, bundle)

	unexport(t, ctx, chartMember, ns, "web")
	eventually(t, propagation, "import withdrawn by the chart-identity agent", func() error {
		_, err := mcs(t, chartMember).MulticlusterV1beta1().ServiceImports(ns).Get(ctx, "web", metav1.GetOptions{})
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("ServiceImport still there (%v)", err)
		}
		return nil
	})
	stopChartAgent()
}

// TestChartRoleWaitsForItsRBAC: a role whose pod starts before the
// apiserver authorizes its ServiceAccount (a fresh helm install creates
// both at once) waits, /readyz saying for what, and starts once the
// bindings are there, without exiting. The CI run of 2026-12-07 00:48
// UTC found the chart's agent and xds containers restarted once in a
// fresh install; exiting on a start-up read was the way to restart.
func TestChartRoleWaitsForItsRBAC(t *testing.T) {
	clusterset(t)
	ctx := ctxFor(t, 2*time.Minute)
	m := clusters.Members[chartMember]
	applyChartRBAC(t, ctx)
	writeClusterCA(t, ctx, m)
	const late = "isthmus-late"
	sas := m.Client.CoreV1().ServiceAccounts("isthmus-system")
	if _, err := sas.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: late}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sas.Delete(context.Background(), late, metav1.DeleteOptions{}) })

	r := startRole(t, "xds", roleKubeconfig(t, ctx, late), "--listen", freePort(t), "--region", regions[chartMember], "--tls", "always", "--server-names", "localhost")
	eventually(t, time.Minute, "xds waiting for its RBAC, saying so", func() error {
		err := r.ready()
		switch {
		case err == nil:
			t.Fatal("xds ready before it was allowed to read anything")
		case strings.Contains(err.Error(), "exited"):
			t.Fatal(err)
		case !strings.Contains(err.Error(), "starting: waiting for the cluster id") || !strings.Contains(err.Error(), "forbidden"):
			return err
		}
		return nil
	})

	// The xds ServiceAccount's bindings, given to the late one too.
	isXDS := func(subjects []rbacv1.Subject) bool {
		return slices.ContainsFunc(subjects, func(s rbacv1.Subject) bool {
			return s.Kind == rbacv1.ServiceAccountKind && s.Namespace == "isthmus-system" && s.Name == "isthmus-xds"
		})
	}
	lateSubject := []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: "isthmus-system", Name: late}}
	crbs, err := m.Client.RbacV1().ClusterRoleBindings().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	bound := 0
	for _, b := range crbs.Items {
		if !isXDS(b.Subjects) {
			continue
		}
		c := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: b.Name + "-late"}, RoleRef: b.RoleRef, Subjects: lateSubject}
		if _, err := m.Client.RbacV1().ClusterRoleBindings().Create(ctx, c, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = m.Client.RbacV1().ClusterRoleBindings().Delete(context.Background(), c.Name, metav1.DeleteOptions{})
		})
		bound++
	}
	rbs, err := m.Client.RbacV1().RoleBindings("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range rbs.Items {
		if !isXDS(b.Subjects) {
			continue
		}
		c := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: b.Name + "-late", Namespace: b.Namespace}, RoleRef: b.RoleRef, Subjects: lateSubject}
		if _, err := m.Client.RbacV1().RoleBindings(b.Namespace).Create(ctx, c, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = m.Client.RbacV1().RoleBindings(c.Namespace).Delete(context.Background(), c.Name, metav1.DeleteOptions{})
		})
		bound++
	}
	if bound == 0 {
		t.Fatal("the chart binds nothing to isthmus-xds")
	}
	eventually(t, time.Minute, "xds ready once its RBAC is there", r.ready)
	r.stop()
}

// TestChartTunnelIdentity runs, with a token of the chart's tunnel
// ServiceAccount, every request the tunnel role makes to its own cluster
// (the tunnel itself needs a gateway node's network; test/tunnel runs it
// in network namespaces): the cluster id, the broker credential, its key
// Secret created and read back, and its Lease taken and released.
func TestChartTunnelIdentity(t *testing.T) {
	clusterset(t)
	ctx := ctxFor(t, time.Minute)
	applyChartRBAC(t, ctx)
	cfg, err := kube.Config(roleKubeconfig(t, ctx, "isthmus-tunnel"), "")
	if err != nil {
		t.Fatal(err)
	}
	c, err := kube.NewClients(cfg, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if id, err := agent.ClusterID(ctx, c.Dynamic, ids[chartMember]); err != nil || id != ids[chartMember] {
		t.Errorf("the cluster id with the tunnel's identity: %q, %v", id, err)
	}
	// Its own broker credential, which is the tunnel's identity on the
	// broker; not the agent's.
	brokerCfg, brokerNS, err := setup.BrokerConfigFrom(ctx, c.Kube, "", setup.RoleSecret(setup.BrokerSecret, setup.RoleTunnel))
	if err != nil {
		t.Fatalf("the broker credential with the tunnel's identity: %v", err)
	}
	if _, _, err := setup.BrokerConfig(ctx, c.Kube, ""); !apierrors.IsForbidden(errors.Unwrap(err)) {
		t.Errorf("the agent's broker credential read with the tunnel's identity: %v, want Forbidden", err)
	}
	asTunnel, err := kube.NewClients(brokerCfg, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	review, err := asTunnel.Kube.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil || review.Status.UserInfo.Username != "system:serviceaccount:"+brokerNS+":"+brokerv1.TunnelServiceAccount(ids[chartMember]) {
		t.Errorf("the tunnel's broker credential authenticates as %v (%v), want its cluster's tunnel identity", review, err)
	}
	admin := clusters.Members[chartMember].Client
	t.Cleanup(func() {
		_ = admin.CoreV1().Secrets("isthmus-system").Delete(context.Background(), "isthmus-tunnel-key", metav1.DeleteOptions{})
		_ = admin.CoordinationV1().Leases("isthmus-system").Delete(context.Background(), "isthmus-tunnel-c", metav1.DeleteOptions{})
	})
	created, err := tunnel.LoadOrCreateKey(ctx, c.Kube, "isthmus-system", "isthmus-tunnel-key")
	if err != nil {
		t.Fatalf("creating the key with the tunnel's identity: %v", err)
	}
	again, err := tunnel.LoadOrCreateKey(ctx, c.Kube, "isthmus-system", "isthmus-tunnel-key")
	if err != nil || again.Private != created.Private {
		t.Errorf("reading the key back with the tunnel's identity: %v (same key: %v)", err, again.Private == created.Private)
	}
	ran := false
	err = election.Run(ctx, election.Config{Client: c.Kube, Namespace: "isthmus-system", Name: "isthmus-tunnel-" + ids[chartMember], Identity: "chart-test", Log: slog.New(slog.DiscardHandler)},
		func(context.Context) error { ran = true; return nil })
	if err != nil || !ran {
		t.Errorf("the gateway Lease with the tunnel's identity: ran %v, %v", ran, err)
	}
	lease, err := admin.CoordinationV1().Leases("isthmus-system").Get(ctx, "isthmus-tunnel-"+ids[chartMember], metav1.GetOptions{})
	if err != nil || lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity != "" {
		t.Errorf("the Lease after a clean stop (released: holder empty): %v %v", lease, err)
	}
}
