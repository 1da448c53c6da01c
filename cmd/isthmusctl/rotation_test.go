package main

import (
	"bytes"
	"context"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/setup"
	"github.com/isthmus-dev/isthmus/test/cluster"
)

// TestRotateLegacyRoot follows the documented rotation of a root with the
// host-only URI constraint, against real apiservers: join stops and says
// to rotate; after the root Secret is deleted and broker install and join
// run again, the member's intermediate is issued under the new root, with
// both roots in its bundle, and a leaf it issues passes openssl verify;
// once the old root is dropped from the published bundle, join drops it
// from the member.
func TestRotateLegacyRoot(t *testing.T) {
	cs := cluster.Start(t, cluster.Options{Broker: true, Members: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ns := brokerv1.DefaultBrokerNamespace
	cli := func(args ...string) (string, error) {
		var stdout, stderr bytes.Buffer
		err := run(ctx, append(args, "--kubeconfig", cs.Kubeconfig), &stdout, &stderr)
		t.Logf("isthmusctl %s\n%s%s", strings.Join(args, " "), stdout.String(), stderr.String())
		return stdout.String(), err
	}
	mustCLI := func(args ...string) {
		t.Helper()
		if _, err := cli(args...); err != nil {
			t.Fatalf("isthmusctl %s: %v", strings.Join(args, " "), err)
		}
	}
	hub, alpha := clientsOf(t, cs.Broker), clientsOf(t, cs.Members[0])
	join := []string{"join", "--context", "member1", "--broker-context", "broker", "--cluster-id", "alpha"}
	mustCLI("broker", "install", "--context", "broker")
	mustCLI(join...)

	// Make it a clusterset of an earlier release: the legacy root on the
	// hub and published, alpha's intermediate issued under it.
	oldRoot, oldAlpha := legacyMaterial(t)
	rs := getSecret(t, hub, ns, brokerv1.RootCASecret)
	rs.Data = map[string][]byte{corev1.TLSCertKey: oldRoot.Cert, corev1.TLSPrivateKeyKey: oldRoot.Key, brokerv1.TrustBundleKey: oldRoot.Bundle}
	if _, err := hub.Kube.CoreV1().Secrets(ns).Update(ctx, rs, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	cm, err := hub.Kube.CoreV1().ConfigMaps(ns).Get(ctx, brokerv1.TrustBundleConfigMap, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data[brokerv1.TrustBundleKey] = string(oldRoot.Bundle)
	if _, err := hub.Kube.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	is := getSecret(t, alpha, setup.MemberNamespace, brokerv1.IntermediateCASecret)
	is.Data = map[string][]byte{corev1.TLSCertKey: oldAlpha.Cert, corev1.TLSPrivateKeyKey: oldAlpha.Key, brokerv1.TrustBundleKey: oldAlpha.Bundle}
	if _, err := alpha.Kube.CoreV1().Secrets(setup.MemberNamespace).Update(ctx, is, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	if _, err := cli(join...); err == nil || !strings.Contains(err.Error(), "rotate the clusterset root") {
		t.Fatalf("join under a legacy root: %v, want an error saying to rotate it", err)
	}

	// Steps 1 to 3.
	if err := hub.Kube.CoreV1().Secrets(ns).Delete(ctx, brokerv1.RootCASecret, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	mustCLI("broker", "install", "--context", "broker")
	newRoot := getSecret(t, hub, ns, brokerv1.RootCASecret).Data[corev1.TLSCertKey]
	mustCLI(join...)
	s := getSecret(t, alpha, setup.MemberNamespace, brokerv1.IntermediateCASecret)
	if why := s.Annotations["isthmus.dev/issued-because"]; !strings.Contains(why, "RFC 5280") {
		t.Errorf("the intermediate was issued again because %q, want the RFC 5280 reason", why)
	}
	if b := s.Data[brokerv1.TrustBundleKey]; !bytes.Contains(b, bytes.TrimSpace(oldRoot.Cert)) || !bytes.Contains(b, bytes.TrimSpace(newRoot)) {
		t.Error("the member's bundle does not hold both roots during the rotation")
	}
	ca := loadMemberCA(t, alpha)
	if err := ca.ConstraintProblem(); err != nil {
		t.Errorf("the re-issued intermediate: %v", err)
	}
	leaf, err := ca.IssueLeaf(brokerv1.GatewaySPIFFEID("alpha", brokerv1.DefaultClustersetDomain), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := opensslVerifyPEM(t, leaf.BundlePEM, leaf.CertChainPEM); err != nil {
		t.Errorf("openssl verify of alpha's gateway leaf after the rotation: %v\n%s", err, out)
	}

	// Step 4.
	cm, err = hub.Kube.CoreV1().ConfigMaps(ns).Get(ctx, brokerv1.TrustBundleConfigMap, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data[brokerv1.TrustBundleKey] = string(newRoot)
	if _, err := hub.Kube.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	mustCLI(join...)
	after := getSecret(t, alpha, setup.MemberNamespace, brokerv1.IntermediateCASecret)
	if bytes.Contains(after.Data[brokerv1.TrustBundleKey], bytes.TrimSpace(oldRoot.Cert)) {
		t.Error("the member's bundle still holds the old root after it was unpublished")
	}
	if !bytes.Equal(after.Data[corev1.TLSCertKey], s.Data[corev1.TLSCertKey]) {
		t.Error("dropping the old root re-issued the intermediate")
	}
}

// opensslVerifyPEM runs openssl verify on the first certificate of chain
// with the rest as untrusted intermediates and bundle as the anchors.
func opensslVerifyPEM(t *testing.T, bundle, chain []byte) (string, error) {
	t.Helper()
	var blocks [][]byte
	for rest := chain; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		blocks = append(blocks, pem.EncodeToMemory(b))
	}
	dir := t.TempDir()
	files := map[string][]byte{"ca.crt": bundle, "leaf.crt": blocks[0], "untrusted.crt": bytes.Join(blocks[1:], nil)}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command("openssl", "verify", "-purpose", "sslserver",
		"-CAfile", filepath.Join(dir, "ca.crt"), "-untrusted", filepath.Join(dir, "untrusted.crt"), filepath.Join(dir, "leaf.crt")).CombinedOutput()
	return string(out), err
}
