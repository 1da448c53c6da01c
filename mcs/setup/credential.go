package setup

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	authenticationv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// A member's broker credential has a lifetime (join's TokenTTL, at most
// the broker's token-lifetime rule). Every role reads the token through a
// BrokerCredential, which re-reads the stored kubeconfig (the Secret join
// wrote, or --broker-kubeconfig) and hands the newest token to every
// request, so a renewed token takes effect without a restart. The agent
// renews it (Renew): at half its life it asks the broker for a new token
// of its own ServiceAccount, which the broker's own-token-only rule allows,
// and stores it in the Secret, where every role reads it. A 401 from the
// broker makes Ready fail with what to do.

// tokenExpiresAnnotation records on the broker Secret when its token
// expires, for people; the token's own exp claim is what counts.
const tokenExpiresAnnotation = "broker.isthmus.dev/token-expires"

// CredentialConfig says where a member's broker credential is kept.
type CredentialConfig struct {
	// Local is this cluster's client: the credential is the kubeconfig in
	// the isthmus-system/isthmus-broker Secret. Unused when Path is set.
	Local kubernetes.Interface
	// Path is a broker kubeconfig file, re-read the same way; a token
	// in a file is not renewed (whoever writes the file renews it).
	Path string
	// Secret names the Secret of MemberNamespace holding the kubeconfig
	// (key BrokerSecretKey); empty means BrokerSecret, the one join
	// writes. A GitOps install may bring its own.
	Secret string
	// Reload is how often the stored credential is read again; zero
	// means 30 s. A 401 reads it at once.
	Reload time.Duration
	// RenewAfter is the part of a token's life after which Renew asks for
	// a new one; zero means one half. Tests renew sooner, as the broker
	// grants no token shorter than ten minutes.
	RenewAfter float64
	Log        *slog.Logger
	// Registry receives isthmus_broker_token_expiry_timestamp_seconds.
	Registry prometheus.Registerer
}

// BrokerCredential is the token every broker request of this process
// carries.
type BrokerCredential struct {
	cfg    CredentialConfig
	expiry prometheus.Gauge
	reload chan struct{}

	mu      sync.Mutex
	token   string
	claims  tokenClaims
	refused error
}

// tokenClaims are what a member reads of its own token, unverified: the
// broker verifies it when it is used.
type tokenClaims struct {
	Exp int64  `json:"exp"`
	Iat int64  `json:"iat"`
	Sub string `json:"sub"`
}

func (c tokenClaims) expires() time.Time { return time.Unix(c.Exp, 0) }

// renewAt is when the token should be renewed: the part after of its
// life gone.
func (c tokenClaims) renewAt(after float64) time.Time {
	return time.Unix(c.Iat+int64(float64(c.Exp-c.Iat)*after), 0)
}

func parseToken(token string) (tokenClaims, bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return tokenClaims{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return tokenClaims{}, false
	}
	var c tokenClaims
	if err := json.Unmarshal(payload, &c); err != nil || c.Exp == 0 {
		return tokenClaims{}, false
	}
	return c, true
}

// NewBrokerCredential loads the broker kubeconfig and returns its
// rest.Config, whose every request carries the credential's newest
// token, and the namespace the kubeconfig names (else the default). A
// kubeconfig that authenticates otherwise (a client certificate) is
// returned as it is, with a nil credential.
func NewBrokerCredential(ctx context.Context, cfg CredentialConfig) (*rest.Config, string, *BrokerCredential, error) {
	if cfg.Secret == "" {
		cfg.Secret = BrokerSecret
	}
	rc, ns, err := BrokerConfigFrom(ctx, cfg.Local, cfg.Path, cfg.Secret)
	if err != nil || rc.BearerToken == "" {
		return rc, ns, nil, err
	}
	if cfg.Reload <= 0 {
		cfg.Reload = 30 * time.Second
	}
	if cfg.RenewAfter <= 0 || cfg.RenewAfter >= 1 {
		cfg.RenewAfter = 0.5
	}
	c := &BrokerCredential{cfg: cfg, reload: make(chan struct{}, 1),
		expiry: prometheus.NewGauge(prometheus.GaugeOpts{Name: "isthmus_broker_token_expiry_timestamp_seconds",
			Help: "When the broker token this process uses expires, in Unix seconds (0: not a token with an expiry). The agent renews it at half its life."})}
	if cfg.Registry != nil {
		if err := cfg.Registry.Register(c.expiry); err != nil {
			return nil, "", nil, fmt.Errorf("registering the broker token metric: %w", err)
		}
	}
	c.set(rc.BearerToken)
	rc.BearerToken, rc.BearerTokenFile = "", ""
	rc.Wrap(func(rt http.RoundTripper) http.RoundTripper { return &bearer{c: c, next: rt} })
	return rc, ns, c, nil
}

// set makes token the one requests carry.
func (c *BrokerCredential) set(token string) {
	claims, _ := parseToken(token)
	c.mu.Lock()
	changed := token != c.token
	c.token, c.claims = token, claims
	if changed {
		c.refused = nil
	}
	c.mu.Unlock()
	c.expiry.Set(float64(claims.Exp))
}

func (c *BrokerCredential) current() (string, tokenClaims) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.token, c.claims
}

// bearer puts the credential's current token on every request and notes
// whether the broker accepted it.
type bearer struct {
	c    *BrokerCredential
	next http.RoundTripper
}

func (b *bearer) RoundTrip(req *http.Request) (*http.Response, error) {
	token, _ := b.c.current()
	req = req.Clone(req.Context())
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := b.next.RoundTrip(req)
	if err == nil {
		b.c.observe(token, resp.StatusCode)
	}
	return resp, err
}

func (c *BrokerCredential) observe(token string, status int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if token != c.token {
		return // an answer to a token already replaced
	}
	if status != http.StatusUnauthorized {
		c.refused = nil
		return
	}
	if c.refused == nil {
		why := "its ServiceAccount was deleted or recreated on the broker, or the token was revoked"
		if !c.claims.expires().IsZero() && time.Now().After(c.claims.expires()) {
			why = fmt.Sprintf("the token expired at %s and was not renewed", c.claims.expires().UTC().Format(time.RFC3339))
		}
		c.refused = fmt.Errorf("the broker refused this cluster's credential (401 Unauthorized) since %s: %s; run `isthmusctl join` for this cluster again (docs/operations.md, \"The broker token\")",
			time.Now().UTC().Format(time.RFC3339), why)
		select {
		case c.reload <- struct{}{}: // perhaps a newer token is stored already
		default:
		}
	}
}

// Ready fails while the broker refuses the credential, saying why and
// what to do.
func (c *BrokerCredential) Ready() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.refused
}

// Run re-reads the stored credential every Reload, and at once after a
// 401, until ctx ends.
func (c *BrokerCredential) Run(ctx context.Context) {
	tick := time.NewTicker(c.cfg.Reload)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-c.reload:
		}
		token, err := c.stored(ctx)
		if err != nil {
			c.cfg.Log.Warn("re-reading the broker credential; keeping the one in use", "err", err)
			continue
		}
		if old, _ := c.current(); token != old {
			c.set(token)
			_, claims := c.current()
			c.cfg.Log.Info("broker token reloaded", "expires", claims.expires().UTC())
		}
	}
}

// stored reads the token the stored kubeconfig holds now.
func (c *BrokerCredential) stored(ctx context.Context) (string, error) {
	rc, _, err := BrokerConfigFrom(ctx, c.cfg.Local, c.cfg.Path, c.cfg.Secret)
	if err != nil {
		return "", err
	}
	if rc.BearerToken == "" {
		return "", errors.New("the stored broker kubeconfig holds no token")
	}
	return rc.BearerToken, nil
}

// Renew keeps the stored tokens renewed until ctx ends: once half of a
// token's life is gone it asks the broker (through broker, which carries
// the current token) for a new token of the same lifetime for the same
// ServiceAccount, and stores it in its Secret, where Run finds it in every
// role. It renews the agent's own Secret and the other roles' (RoleSecret:
// the xDS server's and the tunnel's), when they exist.
//
// The agent renews every role's token, not each role its own: the xDS
// identity is read-only and the tunnel's may write only its record, so
// neither may mint tokens (a stolen one could otherwise extend its own
// life forever), and neither role may write Secrets in the member; the
// agent already holds both rights for its own token, is elected (one
// writer), and the broker lets it mint tokens only for its own cluster's
// three identities (its Role names them; rule own-token-only).
// A kubeconfig file is left to whoever wrote it.
func (c *BrokerCredential) Renew(ctx context.Context, broker kubernetes.Interface) {
	if c.cfg.Path != "" {
		c.cfg.Log.Info("the broker token comes from a kubeconfig file; the agent does not renew it", "path", c.cfg.Path)
		return
	}
	check := c.cfg.Reload
	for {
		_, claims := c.current()
		if claims.Exp != 0 && time.Now().After(claims.renewAt(c.cfg.RenewAfter)) {
			token, err := c.renew(ctx, broker, c.cfg.Secret)
			switch {
			case err != nil:
				c.cfg.Log.Error("renewing the broker token; will retry", "err", err, "expires", claims.expires().UTC())
			case token != "":
				c.set(token)
			}
		}
		for _, role := range BrokerRoles[1:] {
			name := RoleSecret(c.cfg.Secret, role)
			if _, err := c.renew(ctx, broker, name); err != nil && !apierrors.IsNotFound(err) {
				c.cfg.Log.Error("renewing a role's broker token; will retry", "role", role, "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(check):
		}
	}
}

// renew renews the token stored in Secret name once past its renewal
// time, returning the new token, or "" when none was due or another
// replica renewed it first.
func (c *BrokerCredential) renew(ctx context.Context, broker kubernetes.Interface, name string) (string, error) {
	secrets := c.cfg.Local.CoreV1().Secrets(MemberNamespace)
	s, err := secrets.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		if apierrors.IsNotFound(err) {
			return "", err
		}
		return "", fmt.Errorf("reading Secret %s/%s: %w", MemberNamespace, name, err)
	}
	kc, err := clientcmd.Load(s.Data[BrokerSecretKey])
	if err != nil {
		return "", fmt.Errorf("parsing the broker kubeconfig in Secret %s/%s: %w", MemberNamespace, name, err)
	}
	cur := kc.Contexts[kc.CurrentContext]
	if cur == nil || kc.AuthInfos[cur.AuthInfo] == nil {
		return "", fmt.Errorf("the broker kubeconfig in Secret %s/%s has no current context with a user", MemberNamespace, name)
	}
	stored := kc.AuthInfos[cur.AuthInfo].Token
	claims, ok := parseToken(stored)
	if !ok {
		return "", fmt.Errorf("the broker token in Secret %s/%s is not a JWT with an expiry", MemberNamespace, name)
	}
	if time.Now().Before(claims.renewAt(c.cfg.RenewAfter)) {
		// Not due, or another replica renewed it already; Run will load it.
		return "", nil
	}
	ns, sa, ok := strings.Cut(strings.TrimPrefix(claims.Sub, "system:serviceaccount:"), ":")
	if !ok || !strings.HasPrefix(claims.Sub, "system:serviceaccount:") {
		return "", fmt.Errorf("the broker token in Secret %s/%s is not a ServiceAccount's (subject %q)", MemberNamespace, name, claims.Sub)
	}
	seconds := claims.Exp - claims.Iat
	tr, err := broker.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &seconds}}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("requesting a new token for %s/%s from the broker: %w", ns, sa, err)
	}
	kc.AuthInfos[cur.AuthInfo].Token = tr.Status.Token
	data, err := clientcmd.Write(*kc)
	if err != nil {
		return "", fmt.Errorf("encoding the broker kubeconfig: %w", err)
	}
	s.Data[BrokerSecretKey] = data
	if s.Annotations == nil {
		s.Annotations = map[string]string{}
	}
	s.Annotations[tokenExpiresAnnotation] = tr.Status.ExpirationTimestamp.UTC().Format(time.RFC3339)
	// The update carries the version read: a replica that renewed first
	// wins, and this token is dropped unused.
	if _, err := secrets.Update(ctx, s, metav1.UpdateOptions{FieldManager: FieldManager}); err != nil {
		if apierrors.IsConflict(err) {
			return "", nil
		}
		return "", fmt.Errorf("storing the renewed broker token in Secret %s/%s: %w", MemberNamespace, name, err)
	}
	c.cfg.Log.Info("broker token renewed", "secret", name, "serviceAccount", ns+"/"+sa, "expires", tr.Status.ExpirationTimestamp.UTC())
	return tr.Status.Token, nil
}
