package auth

import (
	"context"
	"errors"
	"strings"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/isthmus-dev/isthmus/test/cluster"
)

// mintToken asks the real apiserver's TokenRequest API for a token of
// namespace/sa bound to audiences (none: the apiserver's own), as the
// kubelet does for a projected volume.
func mintToken(t *testing.T, kube kubernetes.Interface, namespace, sa string, audiences ...string) string {
	t.Helper()
	ctx := context.Background()
	_, err := kube.CoreV1().ServiceAccounts(namespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{})
	if err != nil && !strings.Contains(err.Error(), "already exists") {
		t.Fatal(err)
	}
	tr, err := kube.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: audiences, ExpirationSeconds: ptr(int64(600))},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

func ptr[T any](v T) *T { return &v }

// TestReviewerOnRealAPIServer checks tokens the real TokenRequest API
// minted with the real TokenReview API: a token bound to isthmus-xds is
// its ServiceAccount's; one for the apiserver's own audience, a made-up
// one and an oversized one are refused, and no refusal quotes the token.
func TestReviewerOnRealAPIServer(t *testing.T) {
	cs := cluster.Start(t, cluster.Options{Broker: true})
	kube := cs.Broker.Client
	ctx := context.Background()
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "isthmus-system"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	gateway := mintToken(t, kube, "isthmus-system", "isthmus-gateway", Audience)
	apiserver := mintToken(t, kube, "isthmus-system", "isthmus-gateway")
	other := mintToken(t, kube, "isthmus-system", "other", Audience, "elsewhere")
	r := NewReviewer(kube, "")

	for _, tc := range []struct {
		name, token, want string
		err               error
	}{
		{"the gateway's token for isthmus-xds", gateway, "isthmus-system/isthmus-gateway", nil},
		{"another ServiceAccount's token", other, "isthmus-system/other", nil},
		{"a token for the apiserver's audience", apiserver, "", ErrInvalid},
		{"a made-up token", "eyJhbGciOiJSUzI1NiJ9.e30.c2ln", "", ErrInvalid},
		{"a huge token", strings.Repeat("x", maxTokenBytes+1), "", ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for round := 0; round < 2; round++ { // the second answer comes from the cache
				sa, err := r.Authenticate(ctx, tc.token)
				if sa != tc.want || !errors.Is(err, tc.err) {
					t.Fatalf("round %d: %q, %v; want %q, %v", round, sa, err, tc.want, tc.err)
				}
				if err != nil && strings.Contains(err.Error(), tc.token[:min(len(tc.token), 40)]) {
					t.Fatalf("the refusal quotes the token: %v", err)
				}
				if err != nil && round == 0 {
					t.Logf("refused: %v", err)
				}
			}
		})
	}

	// A reviewer whose credential may not create TokenReviews fails
	// temporarily (the server answers Unavailable), and is not cached.
	cfg, err := cs.Broker.ConfigFor("nobody")
	if err != nil {
		t.Fatal(err)
	}
	weak := NewReviewer(kubernetes.NewForConfigOrDie(cfg), "")
	_, err = weak.Authenticate(ctx, gateway)
	var tmp interface{ Temporary() bool }
	if !errors.Is(err, ErrUnavailable) || !errors.As(err, &tmp) || !tmp.Temporary() {
		t.Fatalf("a review without rights: %v, want a temporary ErrUnavailable", err)
	}
	if len(weak.cache) != 0 {
		t.Error("a failed review was cached")
	}
}

func TestServiceAccountOf(t *testing.T) {
	for _, tc := range []struct {
		user, ns, name string
		ok             bool
	}{
		{"system:serviceaccount:isthmus-system:isthmus-gateway", "isthmus-system", "isthmus-gateway", true},
		{"system:serviceaccount:ns:", "", "", false},
		{"system:serviceaccount::sa", "", "", false},
		{"system:serviceaccount:ns:a:b", "", "", false},
		{"alice", "", "", false},
		{"system:node:n1", "", "", false},
	} {
		ns, name, ok := ServiceAccountOf(tc.user)
		if ok != tc.ok || (ok && (ns != tc.ns || name != tc.name)) {
			t.Errorf("%q: %q %q %v", tc.user, ns, name, ok)
		}
	}
}
