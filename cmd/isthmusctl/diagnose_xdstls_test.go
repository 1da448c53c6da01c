package main

import (
	"context"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/isthmus-dev/isthmus/cmd/internal/kube"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/test/cluster"
	"github.com/isthmus-dev/isthmus/xds/auth"
	"github.com/isthmus-dev/isthmus/xds/identity"
	"github.com/isthmus-dev/isthmus/xds/model"
	"github.com/isthmus-dev/isthmus/xds/server"
)

// TestDiagnoseXDSOverTLS runs diagnose's xDS check against the real xDS
// server served as the chart serves it: over TLS with a certificate from
// cluster a's intermediate, checking each stream's token with TokenReview
// on a real apiserver, the same apiserver diagnose reads the clusterset's
// roots from and mints its token with (TokenRequest). With the defaults
// every check passes; each way it can go wrong fails the step it is in,
// saying what to do.
func TestDiagnoseXDSOverTLS(t *testing.T) {
	cs := cluster.Start(t, cluster.Options{Broker: true})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	k := cs.Broker.Client
	ns := brokerv1.MemberNamespace
	if _, err := k.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, sa := range []string{brokerv1.GatewayServiceAccount, "client"} {
		if _, err := k.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	root, err := identity.NewRoot(brokerv1.DefaultClustersetDomain, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	inter, err := root.IssueIntermediate("a", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	serving, err := inter.IssueServing("spiffe://a.clusterset.isthmus/ns/isthmus-system/sa/isthmus-xds", []string{defaultXDSServerName}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	other, err := identity.NewRoot(brokerv1.DefaultClustersetDomain, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherRoots := filepath.Join(t.TempDir(), "other.crt")
	if err := os.WriteFile(otherRoots, pemOf(t, other), 0o644); err != nil {
		t.Fatal(err)
	}
	goodRoots := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(goodRoots, pemOf(t, root), 0o644); err != nil {
		t.Fatal(err)
	}

	addr := serveXDSWith(t, server.Config{Authenticator: auth.NewReviewer(k, ""), GatewayServiceAccount: ns + "/" + brokerv1.GatewayServiceAccount},
		&tls.Config{Certificates: []tls.Certificate{serving.Certificate}, MinVersion: tls.VersionTLS12}, model.Gateway, twoClusters(true), echoService(true, true))
	plaintext := serveXDS(t, model.Gateway, twoClusters(true), echoService(true, true))

	admin := kubeClientsOf(t, cs.Broker.Config)
	nobodyCfg := rest.CopyConfig(cs.Broker.Config)
	nobodyCfg.Impersonate = rest.ImpersonationConfig{UserName: "nobody"}
	nobody := kubeClientsOf(t, nobodyCfg)

	defaults := xdsConnFlags{serverName: defaultXDSServerName, serviceAccount: ns + "/" + brokerv1.GatewayServiceAccount}
	with := func(change func(*xdsConnFlags)) xdsConnFlags {
		f := defaults
		change(&f)
		return f
	}
	const listener, gateway = "xds echo.demo.svc.clusterset.local:80", "xds gateway :16000"
	type want struct {
		check, detail, advice string
		ok                    bool
	}
	steps := []struct {
		name    string
		id      string
		server  string
		local   *kube.Clients
		flags   xdsConnFlags
		setup   func()
		results []want
	}{
		{name: "no trust bundle in the cluster yet", flags: defaults, results: []want{
			{check: "xds trust", detail: "ConfigMap isthmus-system/isthmus-trust-bundle", advice: "run it for this cluster, or pass --xds-ca-file"}}},
		{name: "the chart's server, with the defaults", flags: defaults,
			setup: func() {
				cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: brokerv1.TrustBundleConfigMap, Namespace: ns},
					Data: map[string]string{brokerv1.TrustBundleKey: string(pemOf(t, root))}}
				if _, err := k.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
			},
			results: []want{
				{check: "xds connection", ok: true, detail: "as isthmus-xds.isthmus-system.svc (spiffe://a.clusterset.isthmus/ns/isthmus-system/sa/isthmus-xds), verified against the roots of ConfigMap isthmus-system/isthmus-trust-bundle; sending a token of isthmus-system/isthmus-gateway"},
				{check: listener, ok: true, detail: "priority 0 a 2/2 healthy"},
				{check: gateway, ok: true, detail: "priority 1 b 1/1 healthy"}}},
		{name: "another ServiceAccount: the gRPC view, not the gateway's", flags: with(func(f *xdsConnFlags) { f.serviceAccount = ns + "/client" }), results: []want{
			{check: "xds connection", ok: true, detail: "a token of isthmus-system/client"},
			{check: listener, ok: true, detail: "priority 0 a 2/2 healthy"},
			{check: gateway, detail: "only for ServiceAccount isthmus-system/isthmus-gateway; the stream's token is isthmus-system/client's", advice: "pass --xds-service-account isthmus-system/isthmus-gateway"}}},
		{name: "no token", flags: with(func(f *xdsConnFlags) { f.serviceAccount = "" }), results: []want{
			{check: "xds connection", ok: true, detail: "sending no token"},
			{check: "xds", detail: "the grpc view needs a projected ServiceAccount token", advice: "the server asks for a token: pass --xds-service-account"}}},
		{name: "a ServiceAccount that does not exist", flags: with(func(f *xdsConnFlags) { f.serviceAccount = ns + "/nobody" }), results: []want{
			{check: "xds token", detail: `serviceaccounts "nobody" not found`, advice: "no such ServiceAccount in this cluster"}}},
		{name: "a user who may not mint tokens", local: nobody, flags: with(func(f *xdsConnFlags) { f.caFile = goodRoots }), results: []want{
			{check: "xds token", detail: "forbidden", advice: "create on serviceaccounts/token in isthmus-system"}}},
		{name: "a user who may not read the bundle", local: nobody, flags: defaults, results: []want{
			{check: "xds trust", detail: "forbidden", advice: "pass the roots with --xds-ca-file"}}},
		{name: "another clusterset's roots", flags: with(func(f *xdsConnFlags) { f.caFile = otherRoots }), results: []want{
			{check: "xds tls", detail: "does not chain to the clusterset's roots", advice: "belongs to another clusterset, or was issued before the root was rotated"}}},
		{name: "a name the certificate does not carry", flags: with(func(f *xdsConnFlags) { f.serverName = "xds.example" }), results: []want{
			{check: "xds tls", detail: "is not for xds.example: it names isthmus-xds.isthmus-system.svc", advice: "pass --xds-server-name"}}},
		{name: "a plaintext server", server: plaintext, flags: defaults, results: []want{
			{check: "xds tls", detail: "does not speak TLS", advice: "pass --xds-plaintext"}}},
		{name: "nothing listens", server: closedPort(t), flags: defaults, results: []want{
			{check: "xds tls", detail: "nothing answers at", advice: "port-forward svc/isthmus-xds 15010"}}},
		{name: "the server of another cluster", id: "b", flags: defaults, results: []want{
			{check: "xds tls", detail: "is spiffe://a.clusterset.isthmus/ns/isthmus-system/sa/isthmus-xds, not of cluster b", advice: "point --xds-server at b's own"}}},
	}
	for _, st := range steps {
		if !t.Run(st.name, func(t *testing.T) {
			if st.setup != nil {
				st.setup()
			}
			d := &diagnosis{name: "echo", ns: "demo", id: "a", local: admin, xdsServer: addr, xdsConn: st.flags,
				ports: []mcsv1beta1.ServicePort{{Name: "tcp", Protocol: "TCP", Port: 80}}, egress: "TCP/80=16000"}
			if st.id != "" {
				d.id = st.id
			}
			if st.server != "" {
				d.xdsServer = st.server
			}
			if st.local != nil {
				d.local = st.local
			}
			d.xds(ctx)
			if len(d.findings) != len(st.results) {
				t.Fatalf("findings %+v, want %d", d.findings, len(st.results))
			}
			for i, w := range st.results {
				f := d.findings[i]
				if f.Check != w.check || f.OK != w.ok || !strings.Contains(f.Detail, w.detail) || !strings.Contains(f.Advice, w.advice) {
					t.Errorf("finding %d: %+v\nwant check %q ok=%v, detail with %q, advice with %q", i, f, w.check, w.ok, w.detail, w.advice)
				}
			}
		}) {
			return
		}
	}
}

func pemOf(t *testing.T, root *identity.CA) []byte {
	t.Helper()
	cert, _, _, err := root.PEM()
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func kubeClientsOf(t *testing.T, cfg *rest.Config) *kube.Clients {
	t.Helper()
	c, err := kube.NewClients(cfg, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// closedPort is a loopback address where nothing listens.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	return l.Addr().String()
}
