package tunnel

import (
	"context"
	"fmt"
	"strconv"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// DefaultKeySecret is the member Secret (in the Isthmus namespace) that
// holds the cluster's WireGuard private key, shared by the gateway
// replicas.
const DefaultKeySecret = "isthmus-tunnel-key"

// LeaseName is the member Lease (in the key Secret's namespace) that lets
// one gateway replica at a time run the device.
func LeaseName(clusterID string) string { return "isthmus-tunnel-" + clusterID }

// KeySecretField is the Secret data field that holds the private key,
// base64 as wg(8) prints it.
const KeySecretField = "privateKey"

// KeyGenerationAnnotation on the key Secret counts the cluster's keys:
// 1 for the first, one more for every rotation. The tunnel publishes it as
// the record's status.tunnel.keyGeneration, so an operator can see that a
// rotation reached the active gateway.
const KeyGenerationAnnotation = "isthmus.dev/tunnel-key-generation"

// Key is the cluster's WireGuard private key and its generation.
type Key struct {
	Private    wgtypes.Key
	Generation int64
}

// generation reads the Secret's key generation; a Secret written by hand
// without one holds generation 1.
func generation(s *corev1.Secret) (int64, error) {
	v, ok := s.Annotations[KeyGenerationAnnotation]
	if !ok {
		return 1, nil
	}
	g, err := strconv.ParseInt(v, 10, 64)
	if err != nil || g < 1 {
		return 0, fmt.Errorf("the WireGuard key Secret %s/%s annotation %s=%q is not a positive integer", s.Namespace, s.Name, KeyGenerationAnnotation, v)
	}
	return g, nil
}

// LoadOrCreateKey returns the cluster's WireGuard private key from the
// Secret namespace/name, creating the Secret with a new key when there is
// none. Every gateway replica of a cluster reads the same Secret, so they
// share one key: a restarted or failed-over gateway is the same peer to
// every other cluster and needs no broker round trip. When two replicas
// race to create it, the loser reads the winner's key.
func LoadOrCreateKey(ctx context.Context, c kubernetes.Interface, namespace, name string) (Key, error) {
	s, err := c.CoreV1().Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		k, genErr := wgtypes.GeneratePrivateKey()
		if genErr != nil {
			return Key{}, fmt.Errorf("generating a WireGuard private key: %w", genErr)
		}
		s = &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: map[string]string{"app.kubernetes.io/managed-by": "isthmus-tunnel"},
				Annotations: map[string]string{KeyGenerationAnnotation: "1"}},
			Type: corev1.SecretTypeOpaque,
			Data: map[string][]byte{KeySecretField: []byte(k.String())},
		}
		s, err = c.CoreV1().Secrets(namespace).Create(ctx, s, metav1.CreateOptions{FieldManager: FieldManager})
		if apierrors.IsAlreadyExists(err) {
			s, err = c.CoreV1().Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
		}
	}
	if err != nil {
		return Key{}, fmt.Errorf("reading the WireGuard key Secret %s/%s: %w", namespace, name, err)
	}
	raw, ok := s.Data[KeySecretField]
	if !ok {
		return Key{}, fmt.Errorf("the WireGuard key Secret %s/%s has no %q field; delete it to have a new key generated", namespace, name, KeySecretField)
	}
	k, err := wgtypes.ParseKey(string(raw))
	if err != nil {
		return Key{}, fmt.Errorf("the WireGuard key Secret %s/%s field %q is not a WireGuard key: %w", namespace, name, KeySecretField, err)
	}
	if k == (wgtypes.Key{}) {
		return Key{}, fmt.Errorf("the WireGuard key Secret %s/%s holds an all-zero key", namespace, name)
	}
	g, err := generation(s)
	if err != nil {
		return Key{}, err
	}
	return Key{Private: k, Generation: g}, nil
}

// Rotation is what RotateKey did.
type Rotation struct {
	OldPublic, NewPublic wgtypes.Key
	// Generation is the new key's generation (one more than the old).
	Generation int64
}

// RotateKey writes a new private key into the cluster's key Secret, bumps
// its generation and returns the old and new public keys. The running tunnel picks the new
// key up at its next resync, puts it on the device and publishes it; the
// other clusters follow through the broker. The update carries the
// Secret's resourceVersion, so a concurrent rotation fails instead of
// being lost.
func RotateKey(ctx context.Context, c kubernetes.Interface, namespace, name string) (Rotation, error) {
	var r Rotation
	s, err := c.CoreV1().Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return r, fmt.Errorf("reading the WireGuard key Secret %s/%s: %w", namespace, name, err)
	}
	if old, err := wgtypes.ParseKey(string(s.Data[KeySecretField])); err == nil {
		r.OldPublic = old.PublicKey()
	}
	g, err := generation(s)
	if err != nil {
		return r, err
	}
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return r, fmt.Errorf("generating a WireGuard private key: %w", err)
	}
	if s.Data == nil {
		s.Data = map[string][]byte{}
	}
	if s.Annotations == nil {
		s.Annotations = map[string]string{}
	}
	s.Data[KeySecretField] = []byte(k.String())
	s.Annotations[KeyGenerationAnnotation] = strconv.FormatInt(g+1, 10)
	if _, err := c.CoreV1().Secrets(namespace).Update(ctx, s, metav1.UpdateOptions{FieldManager: FieldManager}); err != nil {
		return r, fmt.Errorf("writing the new key to Secret %s/%s: %w", namespace, name, err)
	}
	r.NewPublic, r.Generation = k.PublicKey(), g+1
	return r, nil
}
