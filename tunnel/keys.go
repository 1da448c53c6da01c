package tunnel

import (
	"context"
	"fmt"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// KeySecretField is the Secret data field that holds the private key,
// base64 as wg(8) prints it.
const KeySecretField = "privateKey"

// LoadOrCreateKey returns the cluster's WireGuard private key from the
// Secret namespace/name, creating the Secret with a new key when there is
// none. Every gateway replica of a cluster reads the same Secret, so they
// share one key: a restarted or failed-over gateway is the same peer to
// every other cluster and needs no broker round trip. When two replicas
// race to create it, the loser reads the winner's key.
func LoadOrCreateKey(ctx context.Context, c kubernetes.Interface, namespace, name string) (wgtypes.Key, error) {
	s, err := c.CoreV1().Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		k, genErr := wgtypes.GeneratePrivateKey()
		if genErr != nil {
			return wgtypes.Key{}, fmt.Errorf("generating a WireGuard private key: %w", genErr)
		}
		s = &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: map[string]string{"app.kubernetes.io/managed-by": "isthmus-tunnel"}},
			Type:       corev1.SecretTypeOpaque,
			Data:       map[string][]byte{KeySecretField: []byte(k.String())},
		}
		s, err = c.CoreV1().Secrets(namespace).Create(ctx, s, metav1.CreateOptions{FieldManager: FieldManager})
		if apierrors.IsAlreadyExists(err) {
			s, err = c.CoreV1().Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
		}
	}
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("reading the WireGuard key Secret %s/%s: %w", namespace, name, err)
	}
	raw, ok := s.Data[KeySecretField]
	if !ok {
		return wgtypes.Key{}, fmt.Errorf("the WireGuard key Secret %s/%s has no %q field; delete it to have a new key generated", namespace, name, KeySecretField)
	}
	k, err := wgtypes.ParseKey(string(raw))
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("the WireGuard key Secret %s/%s field %q is not a WireGuard key: %w", namespace, name, KeySecretField, err)
	}
	if k == (wgtypes.Key{}) {
		return wgtypes.Key{}, fmt.Errorf("the WireGuard key Secret %s/%s holds an all-zero key", namespace, name)
	}
	return k, nil
}

// RotateKey writes a new private key into the cluster's key Secret and
// returns the old and new public keys. The running tunnel picks the new
// key up at its next resync, puts it on the device and publishes it; the
// other clusters follow through the broker. The update carries the
// Secret's resourceVersion, so a concurrent rotation fails instead of
// being lost.
func RotateKey(ctx context.Context, c kubernetes.Interface, namespace, name string) (oldPub, newPub wgtypes.Key, err error) {
	s, err := c.CoreV1().Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return oldPub, newPub, fmt.Errorf("reading the WireGuard key Secret %s/%s: %w", namespace, name, err)
	}
	if old, err := wgtypes.ParseKey(string(s.Data[KeySecretField])); err == nil {
		oldPub = old.PublicKey()
	}
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return oldPub, newPub, fmt.Errorf("generating a WireGuard private key: %w", err)
	}
	if s.Data == nil {
		s.Data = map[string][]byte{}
	}
	s.Data[KeySecretField] = []byte(k.String())
	if _, err := c.CoreV1().Secrets(namespace).Update(ctx, s, metav1.UpdateOptions{FieldManager: FieldManager}); err != nil {
		return oldPub, newPub, fmt.Errorf("writing the new key to Secret %s/%s: %w", namespace, name, err)
	}
	return oldPub, k.PublicKey(), nil
}
