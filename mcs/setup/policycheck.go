package setup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// The broker's guarantees rest on its admission policies: RBAC lets every
// member write every record, and only the policies confine it to its own.
// Someone deleting a policy or its binding on the hub opens that door
// without a sound, so join refuses to join a broker missing one, and the
// agent checks them every minute and is not ready while one is missing
// (PolicyCheck). Members read them through a ClusterRole that names them,
// bound to every ServiceAccount of the broker namespace.

// PolicyReaderPrefix starts the name of the ClusterRole (and its binding)
// letting the broker namespace's ServiceAccounts read the broker's
// admission policies; PolicyReaderName completes it.
const PolicyReaderPrefix = "isthmus-broker-policies-"

// PolicyReaderName names the policy-reading ClusterRole of the broker in
// namespace ns.
func PolicyReaderName(ns string) string { return PolicyReaderPrefix + ns }

// BrokerPolicies are the names of the broker's admission policies (each
// with a binding of the same name) in namespace ns.
func BrokerPolicies(ns string) []string {
	return []string{PolicyName(ns), AllowlistPolicyName(ns), TunnelPolicyName(ns)}
}

func policyReaderObjects(ns string) (*rbacv1.ClusterRole, *rbacv1.ClusterRoleBinding) {
	name := PolicyReaderName(ns)
	role := &rbacv1.ClusterRole{
		TypeMeta:   metav1.TypeMeta{APIVersion: rbacv1.SchemeGroupVersion.String(), Kind: "ClusterRole"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: partOf},
		Rules: []rbacv1.PolicyRule{{
			APIGroups:     []string{admissionv1.GroupName},
			Resources:     []string{"validatingadmissionpolicies", "validatingadmissionpolicybindings"},
			ResourceNames: BrokerPolicies(ns),
			Verbs:         []string{"get"},
		}},
	}
	binding := &rbacv1.ClusterRoleBinding{
		TypeMeta:   metav1.TypeMeta{APIVersion: rbacv1.SchemeGroupVersion.String(), Kind: "ClusterRoleBinding"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: partOf},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: "system:serviceaccounts:" + ns}},
	}
	return role, binding
}

// CheckBrokerPolicies returns an error naming every admission policy or
// binding of the broker in namespace ns that is missing or no longer
// enforced (a binding that does not deny, or names another policy), and
// what to do; nil when all are in place.
func CheckBrokerPolicies(ctx context.Context, hub kubernetes.Interface, ns string) error {
	api := hub.AdmissionregistrationV1()
	var wrong []string
	for _, name := range BrokerPolicies(ns) {
		if _, err := api.ValidatingAdmissionPolicies().Get(ctx, name, metav1.GetOptions{}); err != nil {
			if apierrors.IsForbidden(err) {
				// A broker installed before members could read its
				// policies: installing it again fixes that too.
				return &UnguardedError{Namespace: ns, Wrong: []string{"this identity may not read the broker's admission policies (ClusterRole " + PolicyReaderName(ns) + " missing)"}}
			}
			if !apierrors.IsNotFound(err) {
				return fmt.Errorf("reading the broker's admission policy %s: %w", name, err)
			}
			wrong = append(wrong, "ValidatingAdmissionPolicy "+name+" is missing")
		}
		if name == AllowlistPolicyName(ns) {
			// Its bindings are one per member (join makes them), which a
			// member may not read; the policy is checked, its bindings
			// are join's.
			continue
		}
		b, err := api.ValidatingAdmissionPolicyBindings().Get(ctx, name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			wrong = append(wrong, "ValidatingAdmissionPolicyBinding "+name+" is missing")
		case err != nil:
			return fmt.Errorf("reading the broker's admission policy binding %s: %w", name, err)
		case b.Spec.PolicyName != name:
			wrong = append(wrong, fmt.Sprintf("ValidatingAdmissionPolicyBinding %s binds %q, not %s", name, b.Spec.PolicyName, name))
		case !slices.Contains(b.Spec.ValidationActions, admissionv1.Deny):
			wrong = append(wrong, fmt.Sprintf("ValidatingAdmissionPolicyBinding %s does not deny (actions %v)", name, b.Spec.ValidationActions))
		}
	}
	if len(wrong) == 0 {
		return nil
	}
	return &UnguardedError{Namespace: ns, Wrong: wrong}
}

// UnguardedError says which of the broker's admission policies or
// bindings are missing or not enforced.
type UnguardedError struct {
	Namespace string
	Wrong     []string
}

func (e *UnguardedError) Error() string {
	return fmt.Sprintf("the broker in namespace %s is not guarded: %s; without them a member's credential can write other members' records; run `isthmusctl broker install --broker-namespace %s` (or `helm upgrade` the isthmus-broker chart) against the hub to restore them",
		e.Namespace, strings.Join(e.Wrong, "; "), e.Namespace)
}

// PolicyCheckConfig configures a PolicyCheck.
type PolicyCheckConfig struct {
	// Broker reads the hub with this member's identity.
	Broker kubernetes.Interface
	// Namespace is the broker namespace.
	Namespace string
	// Interval between checks; zero means a minute.
	Interval time.Duration
	Log      *slog.Logger
	// Registry receives isthmus_broker_policies_missing.
	Registry prometheus.Registerer
}

// PolicyCheck checks the broker's admission policies periodically; its
// Ready fails while one is missing.
type PolicyCheck struct {
	cfg     PolicyCheckConfig
	missing prometheus.Gauge

	mu  sync.Mutex
	err error
}

// errNotChecked is Ready's answer before the first check.
var errNotChecked = errors.New("the broker's admission policies are not checked yet")

// NewPolicyCheck returns a PolicyCheck; Run does the checking.
func NewPolicyCheck(cfg PolicyCheckConfig) (*PolicyCheck, error) {
	if cfg.Interval <= 0 {
		cfg.Interval = time.Minute
	}
	c := &PolicyCheck{cfg: cfg, err: errNotChecked, missing: prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "isthmus_broker_policies_missing",
		Help: "1 while one of the broker's admission policies or bindings is missing or does not deny, as this member reads them; 0 when all are in place. Restore them with isthmusctl broker install.",
	})}
	if cfg.Registry != nil {
		if err := cfg.Registry.Register(c.missing); err != nil {
			return nil, fmt.Errorf("registering the broker policy metric: %w", err)
		}
	}
	return c, nil
}

// Ready fails, with what to do, while a policy is missing.
func (c *PolicyCheck) Ready() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Run checks at once and then every Interval until ctx ends. A check that
// cannot read the hub keeps the last verdict (the broker credential's own
// check reports an unreachable or refusing broker).
func (c *PolicyCheck) Run(ctx context.Context) {
	for {
		err := CheckBrokerPolicies(ctx, c.cfg.Broker, c.cfg.Namespace)
		var unguarded *UnguardedError
		if err != nil && !errors.As(err, &unguarded) {
			c.cfg.Log.Warn("checking the broker's admission policies; keeping the last verdict", "err", err)
		} else {
			c.mu.Lock()
			was := c.err
			c.err = err
			c.mu.Unlock()
			if err != nil {
				c.missing.Set(1)
				if was == nil || errors.Is(was, errNotChecked) {
					c.cfg.Log.Error("the broker's admission policies are not in place", "err", err)
				}
			} else {
				c.missing.Set(0)
				if was != nil && !errors.Is(was, errNotChecked) {
					c.cfg.Log.Info("the broker's admission policies are in place again")
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(c.cfg.Interval):
		}
	}
}
