package setup

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// storedToken is the token in a member's broker Secret.
func storedToken(t *testing.T, ctx context.Context, member *Clients) string {
	t.Helper()
	return storedTokenIn(t, ctx, member, BrokerSecret)
}

// storedTokenIn is the token in the member's broker Secret secret.
func storedTokenIn(t *testing.T, ctx context.Context, member *Clients, secret string) string {
	t.Helper()
	s, err := member.Kube.CoreV1().Secrets(MemberNamespace).Get(ctx, secret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.RESTConfigFromKubeConfig(s.Data[BrokerSecretKey])
	if err != nil {
		t.Fatal(err)
	}
	return cfg.BearerToken
}

// credential is the member's broker credential as a role holds it, its
// clients, and its metrics registry; Run (and Renew after renewAfter of a
// token's life, if not zero) run until the test ends.
func credential(t *testing.T, ctx context.Context, member *Clients, renewAfter float64) (*BrokerCredential, *Clients, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cfg, ns, cred, err := NewBrokerCredential(ctx, CredentialConfig{Local: member.Kube, Reload: time.Second, RenewAfter: renewAfter, Log: log, Registry: reg})
	if err != nil || cred == nil {
		t.Fatalf("loading the broker credential: %v (credential %v)", err, cred)
	}
	if ns != brokerv1.DefaultBrokerNamespace {
		t.Errorf("broker namespace %q", ns)
	}
	broker, err := NewClients(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go cred.Run(rctx)
	if renewAfter > 0 {
		go cred.Renew(rctx, broker.Kube)
	}
	return cred, broker, reg
}

// brokerWork is what an agent does at the broker with its credential:
// read the records and write its own Cluster record (a dry run).
func brokerWork(t *testing.T, ctx context.Context, broker *Clients, id string) error {
	clusters := broker.Dynamic.Resource(clusterGVR).Namespace(brokerv1.DefaultBrokerNamespace)
	if _, err := clusters.List(ctx, metav1.ListOptions{}); err != nil {
		return err
	}
	_, err := clusters.Create(ctx, toUnstructured(t, validCluster(id)), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if apierrors.IsAlreadyExists(err) {
		err = nil
	}
	return err
}

// TestBrokerTokenRenewedPastExpiry (H5): alpha's stored token lives ten
// minutes, the shortest the apiserver grants. The credential's renewer
// asks the broker for a new token of the same life (here after 2 % of it,
// not half, so the test does not wait five minutes) and stores it; then
// the first token dies. It is bound to a Secret of the hub, and deleting
// that Secret revokes it at once, standing in for its expiry, which the
// broker judges the same way: a token it no longer accepts. The same
// clients, built once, keep working, and the expiry metric follows the new
// token.
func TestBrokerTokenRenewedPastExpiry(t *testing.T) {
	hub, a, _ := joined(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ns := brokerv1.DefaultBrokerNamespace
	binding, err := hub.Kube.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "alpha-first-token"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tr, err := hub.Kube.CoreV1().ServiceAccounts(ns).CreateToken(ctx, brokerv1.MemberServiceAccount(alpha), &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptrTo(int64(600)),
			BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Secret", APIVersion: "v1", Name: binding.Name, UID: binding.UID}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	first := tr.Status.Token
	storeToken(t, ctx, a, first)
	claims, ok := parseToken(first)
	if !ok || claims.Exp-claims.Iat != 600 {
		t.Fatalf("the first token lives %d s, want 600", claims.Exp-claims.Iat)
	}
	const renewAfter = 0.02 // 12 s
	cred, broker, reg := credential(t, ctx, a, renewAfter)
	if got := testutil.ToFloat64(cred.expiry); got != float64(claims.Exp) {
		t.Errorf("isthmus_broker_token_expiry_timestamp_seconds = %v, want %d", got, claims.Exp)
	}
	if n, err := testutil.GatherAndCount(reg, "isthmus_broker_token_expiry_timestamp_seconds"); err != nil || n != 1 {
		t.Errorf("the expiry metric is not registered: %d, %v", n, err)
	}
	if err := brokerWork(t, ctx, broker, alpha); err != nil {
		t.Fatalf("the broker work with the first token: %v", err)
	}

	// Renewed, with the same life, and stored.
	var renewed string
	for {
		if renewed = storedToken(t, ctx, a); renewed != first {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the token was not renewed")
		}
		time.Sleep(time.Second)
	}
	next, _ := parseToken(renewed)
	if next.Iat < claims.renewAt(renewAfter).Unix() || next.Exp-next.Iat != 600 {
		t.Errorf("renewed token issued at %v (renewal due %v) living %d s", time.Unix(next.Iat, 0), claims.renewAt(renewAfter), next.Exp-next.Iat)
	}

	// The first token dies: the broker refuses it, and the same clients
	// still work, on the renewed token.
	if err := hub.Kube.CoreV1().Secrets(ns).Delete(ctx, binding.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	old, err := NewClients(&rest.Config{Host: hub.Config.Host, BearerToken: first, TLSClientConfig: rest.TLSClientConfig{CAData: hub.Config.CAData}})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the broker refusing the first token", func() error {
		if err := brokerWork(t, ctx, old, alpha); !apierrors.IsUnauthorized(err) {
			return errString("the first token after its binding went: " + errText(err) + ", want 401 Unauthorized")
		}
		return nil
	})
	for range 3 {
		if err := brokerWork(t, ctx, broker, alpha); err != nil {
			t.Fatalf("the broker work after the first token died: %v", err)
		}
	}
	if err := cred.Ready(); err != nil {
		t.Errorf("not ready with a renewed token: %v", err)
	}
	if got := testutil.ToFloat64(cred.expiry); got < float64(next.Exp) {
		t.Errorf("the expiry metric says %v, want at least the renewed token's %d", got, next.Exp)
	}
}

// storeToken puts token in the member's stored broker kubeconfig, as join
// would have.
func storeToken(t *testing.T, ctx context.Context, member *Clients, token string) {
	t.Helper()
	storeTokenIn(t, ctx, member, BrokerSecret, token)
}

// storeTokenIn replaces the token in the member's broker Secret secret.
func storeTokenIn(t *testing.T, ctx context.Context, member *Clients, secret, token string) {
	t.Helper()
	secrets := member.Kube.CoreV1().Secrets(MemberNamespace)
	s, err := secrets.Get(ctx, secret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kc, err := clientcmd.Load(s.Data[BrokerSecretKey])
	if err != nil {
		t.Fatal(err)
	}
	kc.AuthInfos[kc.Contexts[kc.CurrentContext].AuthInfo].Token = token
	if s.Data[BrokerSecretKey], err = clientcmd.Write(*kc); err != nil {
		t.Fatal(err)
	}
	if _, err := secrets.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestRevokedBrokerTokenFailsReadiness (H5): beta's broker ServiceAccount
// is deleted and recreated on the hub, which revokes every token it had.
// The credential's next request gets a 401 and Ready fails saying what
// happened and what to do; `join` again stores a new token, which the
// credential reloads, and it is ready again without a restart.
func TestRevokedBrokerTokenFailsReadiness(t *testing.T) {
	hub, _, b := joined(t)
	ctx := ctxFor(t)
	cred, broker, _ := credential(t, ctx, b, 0)
	if err := brokerWork(t, ctx, broker, beta); err != nil {
		t.Fatalf("the broker work before the revocation: %v", err)
	}
	if err := cred.Ready(); err != nil {
		t.Fatalf("not ready at first: %v", err)
	}
	sas := hub.Kube.CoreV1().ServiceAccounts(brokerv1.DefaultBrokerNamespace)
	sa, err := sas.Get(ctx, brokerv1.MemberServiceAccount(beta), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := sas.Delete(ctx, sa.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := sas.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa.Name, Labels: sa.Labels, Annotations: sa.Annotations},
		AutomountServiceAccountToken: sa.AutomountServiceAccountToken}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a 401 failing readiness", func() error {
		err := brokerWork(t, ctx, broker, beta)
		if !apierrors.IsUnauthorized(err) {
			return errString("broker work after the revocation: " + errText(err))
		}
		return nil
	})
	err = cred.Ready()
	if err == nil || !strings.Contains(err.Error(), "401 Unauthorized") || !strings.Contains(err.Error(), "isthmusctl join") {
		t.Fatalf("Ready after a 401 = %v, want the 401 and what to do", err)
	}
	if tok := storedToken(t, ctx, b); strings.Contains(err.Error(), tok) {
		t.Fatal("the readiness message holds the token")
	}

	var out bytes.Buffer
	if _, err := Join(ctx, hub, b, JoinOptions{ClusterID: beta, ExportNamespaces: []string{"demo"}}, &out); err != nil {
		t.Fatalf("joining again: %v", err)
	}
	eventually(t, "ready again on the new token", func() error {
		if err := brokerWork(t, ctx, broker, beta); err != nil {
			return err
		}
		return cred.Ready()
	})
}

func errText(err error) string {
	if err == nil {
		return "succeeded"
	}
	return err.Error()
}

func ptrTo[T any](v T) *T { return &v }
