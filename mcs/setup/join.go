package setup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/api/crds"
)

// JoinOptions say how a member joins the broker.
type JoinOptions struct {
	// ClusterID is the member's cluster id. Empty means the id the member's
	// cluster.clusterset.k8s.io ClusterProperty already holds.
	ClusterID string
	// BrokerNamespace is the broker namespace; empty means isthmus-broker.
	BrokerNamespace string
	// BrokerServer is the broker's API address as the member's agents reach
	// it; empty means the address isthmusctl used.
	BrokerServer string
	// TokenTTL is the lifetime of the member's broker token; zero means 90
	// days. Join issues a new one once half of it has passed.
	TokenTTL time.Duration
	// Certificates, when set, issues the member's intermediate CA into
	// isthmus-system/isthmus-ca (and again once half its life has passed).
	// Without it no identity is set up. When the broker has no clusterset
	// root yet (its Helm chart makes none), join makes it, as `broker
	// install` would, for ClustersetDomain.
	Certificates Certificates
	// ClustersetDomain is the clusterset domain of a root join makes;
	// empty means clusterset.isthmus. A root that exists keeps its own.
	ClustersetDomain string
	// PodCIDRs and ServiceCIDRs, given together, are the member's address
	// ranges as the hub admin approves them: recorded in its MemberPolicy,
	// they are the only ranges the broker lets it claim, and its
	// EndpointSlices may carry only addresses in PodCIDRs. When both are
	// empty a second join keeps what the MemberPolicy already holds.
	PodCIDRs, ServiceCIDRs []string
	// ExportNamespaces, when set, are the only namespaces the member may
	// export Services from. When empty a second join keeps what the
	// MemberPolicy already holds.
	ExportNamespaces []string
	// MaxExports and MaxEndpointSlices, when set, are the member's record
	// limits in its MemberPolicy (spec.limits), enforced once the hub's
	// record counter counts its records. When unset a second join keeps
	// what the MemberPolicy holds, and a first one writes the defaults
	// (brokerv1.DefaultMaxExports, DefaultMaxEndpointSlices).
	MaxExports, MaxEndpointSlices *int32
}

// Names in a member cluster.
const (
	// MemberNamespace holds Isthmus in each member cluster.
	MemberNamespace = brokerv1.MemberNamespace
	// BrokerSecret is the Secret in MemberNamespace holding the member's
	// broker kubeconfig under the key BrokerSecretKey.
	BrokerSecret    = "isthmus-broker"
	BrokerSecretKey = "kubeconfig"
	// ClusterIDProperty is the ClusterProperty naming the cluster id
	// (KEP-2149).
	ClusterIDProperty = "cluster.clusterset.k8s.io"
	// memberUIDAnnotation records, on the member's broker ServiceAccount,
	// the kube-system namespace UID of the cluster that joined with that
	// id, so a second cluster cannot take over an id already in use.
	memberUIDAnnotation = "broker.isthmus.dev/member-kube-system-uid"
)

var (
	clusterPropertyGVR = schema.GroupVersionResource{Group: "about.k8s.io", Version: "v1alpha1", Resource: "clusterproperties"}
	serviceAccountGVR  = corev1.SchemeGroupVersion.WithResource("serviceaccounts")
	secretGVR          = corev1.SchemeGroupVersion.WithResource("secrets")
)

// Join makes member a member of the clusterset whose broker is hub: it
// installs the MCS and ClusterProperty CRDs in the member, settles its
// cluster id, creates its identities on the broker (a ServiceAccount per
// role: the agent's bound to the member Role, the xDS server's read-only,
// the tunnel's confined to its record), stores a broker kubeconfig for
// each in the member's isthmus-system Secrets (RoleSecret: isthmus-broker,
// isthmus-broker-xds, isthmus-broker-tunnel) and, given Certificates, its
// intermediate CA in isthmus-system/isthmus-ca. It refuses a broker whose
// admission policies are not in place. It returns the cluster id.
func Join(ctx context.Context, hub, member *Clients, opts JoinOptions, out io.Writer) (string, error) {
	return join(ctx, hub, member, opts, out, nil)
}

// JoinManifests is Join for a GitOps tool: it sets up the member's
// identity on the broker as Join does (the token it issues must exist
// there) but writes nothing to the member, which it only reads. It returns
// what Join would apply there, in order: the CRDs, the ClusterProperty,
// the namespace and the Secrets (the three roles' broker kubeconfigs, the
// intermediate CA). A broker token or intermediate the member already
// holds is kept while still good, so once the manifests are applied a
// second run gives the same ones.
func JoinManifests(ctx context.Context, hub, member *Clients, opts JoinOptions, out io.Writer) (string, []*unstructured.Unstructured, error) {
	var manifests []*unstructured.Unstructured
	id, err := join(ctx, hub, member, opts, out, &manifests)
	if err != nil {
		return "", nil, err
	}
	return id, manifests, nil
}

func join(ctx context.Context, hub, member *Clients, opts JoinOptions, out io.Writer, manifests *[]*unstructured.Unstructured) (string, error) {
	ns := opts.BrokerNamespace
	if ns == "" {
		ns = brokerv1.DefaultBrokerNamespace
	}
	ttl := opts.TokenTTL
	if ttl == 0 {
		ttl = 90 * 24 * time.Hour
	}
	if ttl < 10*time.Minute {
		return "", fmt.Errorf("token TTL %v is shorter than the 10 minutes the apiserver allows", ttl)
	}
	onHub := &applier{c: hub, out: out, where: " (broker)"}
	onMember := &applier{c: member, out: out, where: " (member)", manifests: manifests}

	// The broker must be installed first; say so plainly if it is not.
	if _, err := hub.Kube.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err != nil {
		if apierrors.IsNotFound(err) {
			return "", fmt.Errorf("broker namespace %s not found on %s: run `isthmusctl broker install` against the hub first", ns, hub.Config.Host)
		}
		return "", fmt.Errorf("reading broker namespace %s: %w", ns, err)
	}
	// A member's confinement rests on the broker's admission policies:
	// never join a broker whose policies someone removed.
	if err := CheckBrokerPolicies(ctx, hub.Kube, ns); err != nil {
		return "", err
	}

	memberCRDs, err := crds.Member()
	if err != nil {
		return "", err
	}
	if err := onMember.applyCRDs(ctx, memberCRDs); err != nil {
		return "", err
	}
	id, err := settleClusterID(ctx, onMember, opts.ClusterID)
	if err != nil {
		return "", err
	}
	uid, err := kubeSystemUID(ctx, member.Kube)
	if err != nil {
		return "", err
	}

	if err := admitMember(ctx, hub, onHub, ns, id, uid, opts); err != nil {
		return "", err
	}
	if note := recordCounterNote(ctx, hub, ns, id); note != "" {
		fmt.Fprintln(out, "note: "+note)
	}

	if _, err := onMember.apply(ctx, namespaceGVR, &corev1.Namespace{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"},
		ObjectMeta: metav1.ObjectMeta{Name: MemberNamespace, Labels: partOf},
	}); err != nil {
		return "", err
	}
	server := opts.BrokerServer
	if server == "" {
		server = hub.Config.Host
	}
	caData, err := brokerCA(hub.Config)
	if err != nil {
		return "", err
	}
	// One kubeconfig per role, each with its own identity's token.
	for _, role := range BrokerRoles {
		if err := writeBrokerSecret(ctx, hub, onMember, brokerSecretSpec{
			secret: RoleSecret(BrokerSecret, role), server: server, caData: caData, namespace: ns,
			serviceAccount: RoleServiceAccount(role, id), cluster: id, ttl: ttl,
		}); err != nil {
			return "", err
		}
	}
	if opts.Certificates != nil {
		if err := joinIdentity(ctx, onHub, onMember, ns, id, opts); err != nil {
			return "", err
		}
	}
	return id, nil
}

// admitMember is the broker's side of a join: the member's MemberPolicy
// and the allowlist policy's binding for it, its ServiceAccount (refused when another cluster already holds the id)
// and the RoleBinding to the member Role.
func admitMember(ctx context.Context, hub *Clients, onHub *applier, ns, id, uid string, opts JoinOptions) error {
	saName := brokerv1.MemberServiceAccount(id)
	existing, err := hub.Kube.CoreV1().ServiceAccounts(ns).Get(ctx, saName, metav1.GetOptions{})
	switch {
	case err == nil:
		if owner := existing.Annotations[memberUIDAnnotation]; owner != "" && owner != uid {
			return fmt.Errorf("cluster id %q is already taken on the broker by another cluster (kube-system UID %s, this one is %s): choose another --cluster-id, or remove the other member first", id, owner, uid)
		}
	case !apierrors.IsNotFound(err):
		return fmt.Errorf("reading ServiceAccount %s/%s on the broker: %w", ns, saName, err)
	}
	// The allowlist is in place before the member's identity can write,
	// and only once the id is known to be this cluster's.
	if err := applyMemberPolicy(ctx, onHub, ns, id, opts); err != nil {
		return err
	}
	if _, err := onHub.apply(ctx, policyBindingGVR, memberAllowlistBinding(ns, id)); err != nil {
		return err
	}
	labels := map[string]string{"app.kubernetes.io/part-of": "isthmus", brokerv1.LabelSourceCluster: id}
	if _, err := onHub.apply(ctx, serviceAccountGVR, &corev1.ServiceAccount{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
		ObjectMeta: metav1.ObjectMeta{Name: saName, Namespace: ns, Labels: labels,
			Annotations: map[string]string{memberUIDAnnotation: uid}},
		// The member gets no long-lived token Secret; it holds a bound,
		// expiring token from the TokenRequest API.
		AutomountServiceAccountToken: ptr(false),
	}); err != nil {
		return err
	}
	if _, err := onHub.apply(ctx, roleBindingGVR, &rbacv1.RoleBinding{
		TypeMeta:   metav1.TypeMeta{APIVersion: rbacv1.SchemeGroupVersion.String(), Kind: "RoleBinding"},
		ObjectMeta: metav1.ObjectMeta{Name: saName, Namespace: ns, Labels: labels},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: MemberRole},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: saName, Namespace: ns}},
	}); err != nil {
		return err
	}
	return admitRoles(ctx, onHub, ns, id)
}

// MemberCredentials does the broker's side of a join for a member that has
// no cluster to keep its credentials in, such as a benchmark's simulated
// member: it admits opts.ClusterID as Join does (uid stands in for the
// kube-system namespace UID) and returns a client configuration that acts
// with the member's own, expiring identity. Join is the way for a real
// cluster.
func MemberCredentials(ctx context.Context, hub *Clients, opts JoinOptions, uid string) (*rest.Config, error) {
	ns := opts.BrokerNamespace
	if ns == "" {
		ns = brokerv1.DefaultBrokerNamespace
	}
	ttl := opts.TokenTTL
	if ttl == 0 {
		ttl = 90 * 24 * time.Hour
	}
	if errs := validation.IsDNS1123Label(opts.ClusterID); len(errs) > 0 {
		return nil, fmt.Errorf("cluster id %q is not a DNS label: %v", opts.ClusterID, errs)
	}
	if err := admitMember(ctx, hub, &applier{c: hub, out: io.Discard, where: " (broker)"}, ns, opts.ClusterID, uid, opts); err != nil {
		return nil, err
	}
	seconds := int64(ttl / time.Second)
	sa := brokerv1.MemberServiceAccount(opts.ClusterID)
	tr, err := hub.Kube.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &seconds}}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("requesting a broker token for %s/%s: %w", ns, sa, err)
	}
	cfg := rest.AnonymousClientConfig(hub.Config)
	cfg.BearerToken = tr.Status.Token
	return cfg, nil
}

// settleClusterID returns the member's cluster id: the ClusterProperty's
// when it has one (which must agree with want, if given), else want, which
// is then recorded as the ClusterProperty.
func settleClusterID(ctx context.Context, onMember *applier, want string) (string, error) {
	prop, err := onMember.c.Dynamic.Resource(clusterPropertyGVR).Get(ctx, ClusterIDProperty, metav1.GetOptions{})
	if err == nil && onMember.manifests != nil {
		// A dry run's manifests hold every member-side object.
		have, _, _ := unstructured.NestedString(prop.Object, "spec", "value")
		if want == "" || want == have {
			want, err = have, apierrors.NewNotFound(clusterPropertyGVR.GroupResource(), ClusterIDProperty)
		}
	}
	switch {
	case err == nil:
		have, _, _ := unstructured.NestedString(prop.Object, "spec", "value")
		if want != "" && want != have {
			return "", fmt.Errorf("this cluster's id is already %q (ClusterProperty %s); joining as %q would change its identity: omit --cluster-id or pass --cluster-id=%s", have, ClusterIDProperty, want, have)
		}
		if errs := validation.IsDNS1123Label(have); len(errs) > 0 {
			return "", fmt.Errorf("this cluster's id %q (ClusterProperty %s) cannot be used: it must be a DNS label: %s", have, ClusterIDProperty, strings.Join(errs, "; "))
		}
		onMember.report(clusterPropertyGVR, ClusterIDProperty, "unchanged")
		return have, nil
	case !apierrors.IsNotFound(err):
		return "", fmt.Errorf("reading ClusterProperty %s: %w", ClusterIDProperty, err)
	}
	if want == "" {
		return "", fmt.Errorf("this cluster has no id yet (no ClusterProperty %s): pass --cluster-id", ClusterIDProperty)
	}
	if errs := validation.IsDNS1123Label(want); len(errs) > 0 {
		return "", fmt.Errorf("cluster id %q must be a DNS label: %s", want, strings.Join(errs, "; "))
	}
	prop = &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "about.k8s.io/v1alpha1",
		"kind":       "ClusterProperty",
		"metadata":   map[string]any{"name": ClusterIDProperty},
		"spec":       map[string]any{"value": want},
	}}
	if _, err := onMember.apply(ctx, clusterPropertyGVR, prop); err != nil {
		return "", err
	}
	return want, nil
}

func kubeSystemUID(ctx context.Context, kube kubernetes.Interface) (string, error) {
	ns, err := kube.CoreV1().Namespaces().Get(ctx, metav1.NamespaceSystem, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("reading the member's kube-system namespace: %w", err)
	}
	return string(ns.UID), nil
}

func brokerCA(cfg *rest.Config) ([]byte, error) {
	if len(cfg.CAData) > 0 {
		return cfg.CAData, nil
	}
	if cfg.CAFile != "" {
		data, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("reading the broker's CA file: %w", err)
		}
		return data, nil
	}
	return nil, errors.New("the broker kubeconfig names no certificate authority; members need one to trust the broker")
}

type brokerSecretSpec struct {
	// secret is the member Secret the kubeconfig is stored in.
	secret                                     string
	server, namespace, serviceAccount, cluster string
	caData                                     []byte
	ttl                                        time.Duration
}

// writeBrokerSecret stores the member's broker kubeconfig, keeping the
// current token while it still works and has more than half its life ahead
// (so joining twice changes nothing), and issuing a new one otherwise.
func writeBrokerSecret(ctx context.Context, hub *Clients, onMember *applier, s brokerSecretSpec) error {
	secrets := onMember.c.Kube.CoreV1().Secrets(MemberNamespace)
	current, err := secrets.Get(ctx, s.secret, metav1.GetOptions{})
	switch {
	case err == nil:
		if tokenStillGood(ctx, current.Data[BrokerSecretKey], s) {
			if onMember.manifests != nil {
				_, err := onMember.apply(ctx, secretGVR, brokerSecret(s.secret, current.Data[BrokerSecretKey], current.Annotations[tokenExpiresAnnotation]))
				return err
			}
			onMember.report(secretGVR, s.secret, "unchanged")
			return nil
		}
	case !apierrors.IsNotFound(err):
		return fmt.Errorf("reading Secret %s/%s: %w", MemberNamespace, s.secret, err)
	}
	seconds := int64(s.ttl / time.Second)
	tr, err := hub.Kube.CoreV1().ServiceAccounts(s.namespace).CreateToken(ctx, s.serviceAccount, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &seconds},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("requesting a broker token for %s/%s: %w", s.namespace, s.serviceAccount, err)
	}
	kubeconfig, err := clientcmd.Write(brokerKubeconfig(s, tr.Status.Token))
	if err != nil {
		return fmt.Errorf("encoding the broker kubeconfig: %w", err)
	}
	_, err = onMember.apply(ctx, secretGVR, brokerSecret(s.secret, kubeconfig, tr.Status.ExpirationTimestamp.UTC().Format(time.RFC3339)))
	return err
}

func brokerSecret(name string, kubeconfig []byte, expires string) *corev1.Secret {
	return &corev1.Secret{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: MemberNamespace, Labels: partOf,
			Annotations: map[string]string{tokenExpiresAnnotation: expires}},
		Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{BrokerSecretKey: kubeconfig},
	}
}

func brokerKubeconfig(s brokerSecretSpec, token string) clientcmdapi.Config {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["broker"] = &clientcmdapi.Cluster{Server: s.server, CertificateAuthorityData: s.caData}
	kc.AuthInfos[s.cluster] = &clientcmdapi.AuthInfo{Token: token}
	kc.Contexts["broker"] = &clientcmdapi.Context{Cluster: "broker", AuthInfo: s.cluster, Namespace: s.namespace}
	kc.CurrentContext = "broker"
	return *kc
}

// tokenStillGood reports whether a stored broker kubeconfig points at the
// same broker and namespace, authenticates there as the member, and has
// more than half of its token's life left.
func tokenStillGood(ctx context.Context, data []byte, s brokerSecretSpec) bool {
	kc, err := clientcmd.Load(data)
	if err != nil {
		return false
	}
	cur := kc.Contexts[kc.CurrentContext]
	if cur == nil || cur.Namespace != s.namespace || kc.Clusters[cur.Cluster] == nil || kc.AuthInfos[cur.AuthInfo] == nil {
		return false
	}
	cl, auth := kc.Clusters[cur.Cluster], kc.AuthInfos[cur.AuthInfo]
	if cl.Server != s.server || string(cl.CertificateAuthorityData) != string(s.caData) {
		return false
	}
	exp, ok := jwtExpiry(auth.Token)
	if !ok || time.Until(exp) < s.ttl/2 {
		return false
	}
	cfg, err := clientcmd.NewDefaultClientConfig(*kc, nil).ClientConfig()
	if err != nil {
		return false
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return false
	}
	review, err := kube.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	return err == nil && review.Status.UserInfo.Username == "system:serviceaccount:"+s.namespace+":"+s.serviceAccount
}

// jwtExpiry reads a JWT's exp claim without verifying it; the broker
// verifies the token when it is used.
func jwtExpiry(token string) (time.Time, bool) {
	c, ok := parseToken(token)
	return c.expires(), ok
}

// BrokerConfig loads the broker credential: a kubeconfig file if given,
// else the Secret join stored in this cluster. It returns the namespace the
// credential names, or the default.
func BrokerConfig(ctx context.Context, local kubernetes.Interface, path string) (*rest.Config, string, error) {
	return BrokerConfigFrom(ctx, local, path, BrokerSecret)
}

// BrokerConfigFrom is BrokerConfig reading the Secret secret of
// MemberNamespace (key BrokerSecretKey) instead of the one join writes: a
// GitOps install may bring the credential in a Secret of its own.
func BrokerConfigFrom(ctx context.Context, local kubernetes.Interface, path, secret string) (*rest.Config, string, error) {
	var raw clientcmd.ClientConfig
	if path != "" {
		rules := &clientcmd.ClientConfigLoadingRules{ExplicitPath: path}
		raw = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{})
	} else {
		s, err := local.CoreV1().Secrets(MemberNamespace).Get(ctx, secret, metav1.GetOptions{})
		if err != nil {
			return nil, "", fmt.Errorf("reading the broker credential from Secret %s/%s (run isthmusctl join, or pass --broker-kubeconfig): %w",
				MemberNamespace, secret, err)
		}
		data := s.Data[BrokerSecretKey]
		if len(data) == 0 {
			return nil, "", fmt.Errorf("the broker Secret %s/%s holds no %q: run isthmusctl join again", MemberNamespace, secret, BrokerSecretKey)
		}
		if raw, err = clientcmd.NewClientConfigFromBytes(data); err != nil {
			return nil, "", fmt.Errorf("parsing the broker kubeconfig: %w", err)
		}
	}
	cfg, err := raw.ClientConfig()
	if err != nil {
		return nil, "", fmt.Errorf("loading the broker kubeconfig: %w", err)
	}
	ns, _, err := raw.Namespace()
	if err != nil || ns == "" || ns == metav1.NamespaceDefault {
		ns = brokerv1.DefaultBrokerNamespace
	}
	return cfg, ns, nil
}
