package setup

import (
	"bytes"
	"context"
	"encoding/pem"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// CAMaterial is a CA as it is stored in a Secret: its certificate (and the
// chain up to the anchor), its private key and the trust bundle, all PEM.
type CAMaterial struct {
	Cert, Key, Bundle []byte
}

// Certificates does the crypto of `broker install` and `join`; this
// package only moves its PEM between Secrets and ConfigMaps. The
// implementation (cmd/isthmusctl, with xds/identity) must never put a key
// in an error.
type Certificates interface {
	// NewRoot makes a clusterset root.
	NewRoot(clustersetDomain string) (CAMaterial, error)
	// ImportRoot checks an operator's own root CA and returns it as
	// stored.
	ImportRoot(clustersetDomain string, cert, key []byte) (CAMaterial, error)
	// IssueIntermediate issues cluster's intermediate CA with the root.
	IssueIntermediate(root CAMaterial, clustersetDomain, cluster string) (CAMaterial, error)
	// RenewalReason says why cluster's current intermediate must be
	// issued again (it does not chain to bundle, is for another cluster,
	// or has used half its life), or "" when it is good.
	RenewalReason(current CAMaterial, bundle []byte, clustersetDomain, cluster string) string
}

// Secret keys and annotations of the CAs.
const (
	// clustersetDomainAnnotation records on the root Secret the clusterset
	// domain it was made for.
	clustersetDomainAnnotation = "isthmus.dev/clusterset-domain"
	renewReasonAnnotation      = "isthmus.dev/issued-because"
)

var configMapGVR = corev1.SchemeGroupVersion.WithResource("configmaps")

// installRoot creates the clusterset root Secret once (never replacing
// it) and publishes its bundle and the clusterset domain in the trust
// bundle ConfigMap, keeping any roots already published there (a root
// rotation publishes old and new together).
func installRoot(ctx context.Context, a *applier, ns string, opts BrokerOptions) error {
	domain := opts.ClustersetDomain
	if domain == "" {
		domain = brokerv1.DefaultClustersetDomain
	}
	secrets := a.c.Kube.CoreV1().Secrets(ns)
	root, err := secrets.Get(ctx, brokerv1.RootCASecret, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		var m CAMaterial
		if len(opts.RootCACert) > 0 || len(opts.RootCAKey) > 0 {
			m, err = opts.Certificates.ImportRoot(domain, opts.RootCACert, opts.RootCAKey)
		} else {
			m, err = opts.Certificates.NewRoot(domain)
		}
		if err != nil {
			return fmt.Errorf("making the clusterset root: %w", err)
		}
		root = caSecret(brokerv1.RootCASecret, ns, m)
		root.Annotations[clustersetDomainAnnotation] = domain
		// Create, not apply: a root that exists, even one written a moment
		// ago by another run, is never replaced.
		created, err := secrets.Create(ctx, root, metav1.CreateOptions{FieldManager: FieldManager})
		switch {
		case err == nil:
			root = created
			a.report(secretGVR, brokerv1.RootCASecret, "created")
		case apierrors.IsAlreadyExists(err):
			if root, err = secrets.Get(ctx, brokerv1.RootCASecret, metav1.GetOptions{}); err != nil {
				return fmt.Errorf("reading Secret %s/%s: %w", ns, brokerv1.RootCASecret, err)
			}
			a.report(secretGVR, brokerv1.RootCASecret, "unchanged")
		default:
			return fmt.Errorf("creating Secret %s/%s: %w", ns, brokerv1.RootCASecret, err)
		}
	case err != nil:
		return fmt.Errorf("reading Secret %s/%s: %w", ns, brokerv1.RootCASecret, err)
	default:
		a.report(secretGVR, brokerv1.RootCASecret, "unchanged")
	}
	if have := root.Annotations[clustersetDomainAnnotation]; have != domain {
		return fmt.Errorf("the clusterset root in %s/%s was made for clusterset domain %q, not %q: pass --clusterset-domain=%s",
			ns, brokerv1.RootCASecret, have, domain, have)
	}
	if len(opts.RootCACert) > 0 && !sameSigner(opts.RootCACert, root.Data[corev1.TLSCertKey]) {
		return fmt.Errorf("the broker already has a clusterset root (Secret %s/%s) and it is not the one given; refusing to replace it, which would cut every member off", ns, brokerv1.RootCASecret)
	}

	cms := a.c.Kube.CoreV1().ConfigMaps(ns)
	bundle := root.Data[brokerv1.TrustBundleKey]
	if cm, err := cms.Get(ctx, brokerv1.TrustBundleConfigMap, metav1.GetOptions{}); err == nil {
		bundle = unionCerts([]byte(cm.Data[brokerv1.TrustBundleKey]), bundle)
	} else if !apierrors.IsNotFound(err) {
		return fmt.Errorf("reading ConfigMap %s/%s: %w", ns, brokerv1.TrustBundleConfigMap, err)
	}
	_, err = a.apply(ctx, configMapGVR, &corev1.ConfigMap{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: metav1.ObjectMeta{Name: brokerv1.TrustBundleConfigMap, Namespace: ns, Labels: partOf},
		Data:       map[string]string{brokerv1.TrustBundleKey: string(bundle), brokerv1.ClustersetDomainKey: domain},
	})
	return err
}

// joinIdentity gives member cluster id its intermediate CA in
// isthmus-system/isthmus-ca, issued with the clusterset root read from the
// broker (join runs with the hub admin's credentials; members cannot read
// it). An intermediate that is still good is kept; one past half its life,
// for another cluster, or not under the published bundle is issued again.
// A broker with no trust bundle (installed by its Helm chart, which makes
// no keys) first gets its root, as `broker install` makes it.
func joinIdentity(ctx context.Context, onHub, onMember *applier, ns, id string, opts JoinOptions) error {
	certs := opts.Certificates
	hub := onHub.c
	cm, err := hub.Kube.CoreV1().ConfigMaps(ns).Get(ctx, brokerv1.TrustBundleConfigMap, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		if err := installRoot(ctx, onHub, ns, BrokerOptions{Namespace: ns, Certificates: certs, ClustersetDomain: opts.ClustersetDomain}); err != nil {
			return fmt.Errorf("the broker had no clusterset root, and making it failed: %w", err)
		}
		cm, err = hub.Kube.CoreV1().ConfigMaps(ns).Get(ctx, brokerv1.TrustBundleConfigMap, metav1.GetOptions{})
	}
	if err != nil {
		return fmt.Errorf("reading ConfigMap %s/%s on the broker: %w", ns, brokerv1.TrustBundleConfigMap, err)
	}
	domain, bundle := cm.Data[brokerv1.ClustersetDomainKey], []byte(cm.Data[brokerv1.TrustBundleKey])
	if domain == "" || len(bundle) == 0 {
		return fmt.Errorf("ConfigMap %s/%s on the broker lacks %s or %s: run `isthmusctl broker install` again",
			ns, brokerv1.TrustBundleConfigMap, brokerv1.ClustersetDomainKey, brokerv1.TrustBundleKey)
	}

	secrets := onMember.c.Kube.CoreV1().Secrets(MemberNamespace)
	reason := "none was issued yet"
	current, err := secrets.Get(ctx, brokerv1.IntermediateCASecret, metav1.GetOptions{})
	switch {
	case err == nil:
		m := CAMaterial{Cert: current.Data[corev1.TLSCertKey], Key: current.Data[corev1.TLSPrivateKeyKey], Bundle: current.Data[brokerv1.TrustBundleKey]}
		reason = certs.RenewalReason(m, bundle, domain, id)
		if reason == "" {
			// Good as it is; only the published bundle may have grown.
			m.Bundle = bundle
			return writeMemberCA(ctx, onMember, m, current.Annotations[renewReasonAnnotation])
		}
	case !apierrors.IsNotFound(err):
		return fmt.Errorf("reading Secret %s/%s: %w", MemberNamespace, brokerv1.IntermediateCASecret, err)
	}

	rootSecret, err := hub.Kube.CoreV1().Secrets(ns).Get(ctx, brokerv1.RootCASecret, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("reading the clusterset root (Secret %s/%s) on the broker, which join needs to issue this cluster's intermediate (run join with the hub admin's credentials): %w",
			ns, brokerv1.RootCASecret, err)
	}
	root := CAMaterial{Cert: rootSecret.Data[corev1.TLSCertKey], Key: rootSecret.Data[corev1.TLSPrivateKeyKey], Bundle: rootSecret.Data[brokerv1.TrustBundleKey]}
	m, err := certs.IssueIntermediate(root, domain, id)
	if err != nil {
		return fmt.Errorf("issuing the intermediate CA of %s: %w", id, err)
	}
	m.Bundle = bundle
	return writeMemberCA(ctx, onMember, m, reason)
}

// writeMemberCA writes the member's intermediate CA Secret, and the trust
// bundle alone (no key) in the ConfigMap TrustBundleConfigMap beside it,
// which pods that must verify the clusterset's certificates mount: the
// gateway's Envoy checks the xDS server's certificate against it.
func writeMemberCA(ctx context.Context, onMember *applier, m CAMaterial, reason string) error {
	if _, err := onMember.apply(ctx, secretGVR, caSecret(brokerv1.IntermediateCASecret, MemberNamespace, m, reason)); err != nil {
		return err
	}
	_, err := onMember.apply(ctx, configMapGVR, &corev1.ConfigMap{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: metav1.ObjectMeta{Name: brokerv1.TrustBundleConfigMap, Namespace: MemberNamespace, Labels: partOf},
		Data:       map[string]string{brokerv1.TrustBundleKey: string(m.Bundle)},
	})
	return err
}

// caSecret is a kubernetes.io/tls Secret holding a CA: tls.crt, tls.key and
// ca.crt.
func caSecret(name, ns string, m CAMaterial, reason ...string) *corev1.Secret {
	s := &corev1.Secret{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: partOf, Annotations: map[string]string{}},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{corev1.TLSCertKey: m.Cert, corev1.TLSPrivateKeyKey: m.Key, brokerv1.TrustBundleKey: m.Bundle},
	}
	if len(reason) > 0 && reason[0] != "" {
		s.Annotations[renewReasonAnnotation] = reason[0]
	}
	return s
}

// certBlocks returns the DER of each CERTIFICATE block in data.
func certBlocks(data []byte) [][]byte {
	var out [][]byte
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return out
		}
		if b.Type == "CERTIFICATE" {
			out = append(out, b.Bytes)
		}
	}
}

// sameSigner reports whether two PEM chains start with the same
// certificate (the one that signs), whatever else they hold.
func sameSigner(a, b []byte) bool {
	x, y := certBlocks(a), certBlocks(b)
	return len(x) > 0 && len(y) > 0 && bytes.Equal(x[0], y[0])
}

// unionCerts is have followed by those certificates of add it lacks.
func unionCerts(have, add []byte) []byte {
	out := append([]byte{}, have...)
	held := certBlocks(have)
next:
	for _, der := range certBlocks(add) {
		for _, h := range held {
			if bytes.Equal(h, der) {
				continue next
			}
		}
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	return out
}
