package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/setup"
	"github.com/isthmus-dev/isthmus/test/cluster"
	"github.com/isthmus-dev/isthmus/xds/identity"
)

// TestIdentities runs broker install and join against real apiservers and
// checks the certificates they leave: the root once and never replaced,
// the bundle published, each member's intermediate confined to its own
// trust domain and usable for its gateway's leaf, renewed after half its
// life and not before, members unable to read the root; and an operator's
// own root imported.
func TestIdentities(t *testing.T) {
	cs := cluster.Start(t, cluster.Options{Broker: true, Members: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ns := brokerv1.DefaultBrokerNamespace
	cli := func(args ...string) (string, error) {
		var stdout, stderr bytes.Buffer
		err := run(ctx, append(args, "--kubeconfig", cs.Kubeconfig), &stdout, &stderr)
		t.Logf("isthmusctl %s\n%s%s", strings.Join(args, " "), stdout.String(), stderr.String())
		return stdout.String(), err
	}
	mustCLI := func(args ...string) string {
		t.Helper()
		out, err := cli(args...)
		if err != nil {
			t.Fatalf("isthmusctl %s: %v", strings.Join(args, " "), err)
		}
		return out
	}
	hub := clientsOf(t, cs.Broker)
	alpha, beta := clientsOf(t, cs.Members[0]), clientsOf(t, cs.Members[1])

	out := mustCLI("broker", "install", "--context", "broker")
	if !strings.Contains(out, "secrets/isthmus-root-ca created") || !strings.Contains(out, "configmaps/isthmus-trust-bundle created") {
		t.Errorf("broker install did not report the root:\n%s", out)
	}
	rootSecret := getSecret(t, hub, ns, brokerv1.RootCASecret)
	cm, err := hub.Kube.CoreV1().ConfigMaps(ns).Get(ctx, brokerv1.TrustBundleConfigMap, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if cm.Data[brokerv1.TrustBundleKey] != string(rootSecret.Data[brokerv1.TrustBundleKey]) || cm.Data[brokerv1.ClustersetDomainKey] != brokerv1.DefaultClustersetDomain {
		t.Fatalf("trust bundle ConfigMap %v does not publish the root", cm.Data)
	}
	if strings.Contains(out, "PRIVATE KEY") {
		t.Errorf("broker install printed a key:\n%s", out)
	}

	mustCLI("join", "--context", "member1", "--broker-context", "broker", "--cluster-id", "alpha")
	mustCLI("join", "--context", "member2", "--broker-context", "broker", "--cluster-id", "beta")
	bundle, err := identity.NewTrustBundle(brokerv1.DefaultClustersetDomain, []byte(cm.Data[brokerv1.TrustBundleKey]))
	if err != nil {
		t.Fatal(err)
	}
	alphaCA := loadMemberCA(t, alpha)
	if !alphaCA.IsIntermediate() || alphaCA.Domain() != "alpha."+brokerv1.DefaultClustersetDomain {
		t.Fatalf("alpha's CA is %s", alphaCA)
	}
	gwA := brokerv1.GatewaySPIFFEID("alpha", brokerv1.DefaultClustersetDomain)
	gwB := brokerv1.GatewaySPIFFEID("beta", brokerv1.DefaultClustersetDomain)
	leaf, err := alphaCA.IssueLeaf(gwA, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	svid, err := leaf.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bundle.Verify(svid.Certificates, time.Now(), gwA); err != nil {
		t.Errorf("alpha's gateway leaf under the published bundle: %v", err)
	}
	if _, err := alphaCA.IssueLeaf(gwB, time.Hour); err == nil {
		t.Error("alpha's intermediate issued beta's gateway identity")
	}
	betaCA := loadMemberCA(t, beta)
	if betaCA.Domain() != "beta."+brokerv1.DefaultClustersetDomain {
		t.Errorf("beta's CA is %s", betaCA)
	}

	t.Run("MembersCannotReadTheRoot", func(t *testing.T) {
		for name, m := range map[string]*setup.Clients{"alpha": alpha, "beta": beta} {
			asMember := brokerClientsOf(t, m)
			if _, err := asMember.Kube.CoreV1().ConfigMaps(ns).Get(ctx, brokerv1.TrustBundleConfigMap, metav1.GetOptions{}); err != nil {
				t.Errorf("%s reading the trust bundle: %v", name, err)
			}
			_, err := asMember.Kube.CoreV1().Secrets(ns).Get(ctx, brokerv1.RootCASecret, metav1.GetOptions{})
			if !apierrors.IsForbidden(err) {
				t.Errorf("%s reading the root Secret: %v, want Forbidden", name, err)
			}
		}
	})

	t.Run("IdempotentAndRootNeverReplaced", func(t *testing.T) {
		interBefore := getSecret(t, alpha, setup.MemberNamespace, brokerv1.IntermediateCASecret)
		out := mustCLI("broker", "install", "--context", "broker") +
			mustCLI("join", "--context", "member1", "--broker-context", "broker")
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if strings.Contains(l, " created") || strings.Contains(l, " configured") {
				t.Errorf("second run changed something: %s", l)
			}
		}
		if !strings.Contains(out, "secrets/isthmus-ca unchanged (member)") {
			t.Errorf("join did not report the intermediate:\n%s", out)
		}
		if got := getSecret(t, alpha, setup.MemberNamespace, brokerv1.IntermediateCASecret); got.ResourceVersion != interBefore.ResourceVersion {
			t.Error("a second join rewrote a good intermediate")
		}
		// Someone else's root is refused, and so is another domain.
		certFile, keyFile := writeForeignRoot(t)
		_, err := cli("broker", "install", "--context", "broker", "--root-ca-cert", certFile, "--root-ca-key", keyFile)
		if err == nil || !strings.Contains(err.Error(), "refusing to replace it") {
			t.Errorf("installing over the root with another: %v", err)
		}
		_, err = cli("broker", "install", "--context", "broker", "--clusterset-domain", "other.example")
		if err == nil || !strings.Contains(err.Error(), "--clusterset-domain=clusterset.isthmus") {
			t.Errorf("installing with another domain: %v", err)
		}
		if got := getSecret(t, hub, ns, brokerv1.RootCASecret); got.ResourceVersion != rootSecret.ResourceVersion {
			t.Error("the root Secret was rewritten")
		}
	})

	t.Run("RenewedAfterHalfItsLife", func(t *testing.T) {
		before := loadMemberCA(t, alpha).Certificate()
		join := func(now time.Time) string {
			p := newPKI(0, 365*24*time.Hour)
			p.now = func() time.Time { return now }
			var out bytes.Buffer
			if _, err := setup.Join(ctx, hub, alpha, setup.JoinOptions{Certificates: p}, &out); err != nil {
				t.Fatal(err)
			}
			return out.String()
		}
		// Just before half its life: kept.
		half := before.NotBefore.Add(before.NotAfter.Sub(before.NotBefore) / 2)
		if out := join(half.Add(-time.Hour)); !strings.Contains(out, "secrets/isthmus-ca unchanged (member)") {
			t.Errorf("renewed before half its life:\n%s", out)
		}
		out := join(half.Add(time.Hour))
		if !strings.Contains(out, "secrets/isthmus-ca configured (member)") {
			t.Fatalf("not renewed after half its life:\n%s", out)
		}
		after := loadMemberCA(t, alpha)
		if after.Certificate().Equal(before) || after.Domain() != alphaCA.Domain() {
			t.Errorf("renewed CA %s, old serial %x", after, before.SerialNumber)
		}
		s := getSecret(t, alpha, setup.MemberNamespace, brokerv1.IntermediateCASecret)
		if reason := s.Annotations["isthmus.dev/issued-because"]; !strings.Contains(reason, "half of its life") {
			t.Errorf("renewal reason %q", reason)
		}
	})

	t.Run("BundleGrowthReachesMembers", func(t *testing.T) {
		// A root rotation publishes old and new roots together; join
		// carries the bundle to the member and keeps the intermediate.
		foreignCert, _ := writeForeignRoot(t)
		extra, err := os.ReadFile(foreignCert)
		if err != nil {
			t.Fatal(err)
		}
		cm, err := hub.Kube.CoreV1().ConfigMaps(ns).Get(ctx, brokerv1.TrustBundleConfigMap, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cm.Data[brokerv1.TrustBundleKey] += string(extra)
		if _, err := hub.Kube.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		before := getSecret(t, beta, setup.MemberNamespace, brokerv1.IntermediateCASecret)
		mustCLI("broker", "install", "--context", "broker") // keeps the added root
		mustCLI("join", "--context", "member2", "--broker-context", "broker")
		after := getSecret(t, beta, setup.MemberNamespace, brokerv1.IntermediateCASecret)
		if !bytes.Equal(after.Data[corev1.TLSCertKey], before.Data[corev1.TLSCertKey]) {
			t.Error("a grown bundle re-issued the intermediate")
		}
		if !bytes.Contains(after.Data[brokerv1.TrustBundleKey], bytes.TrimSpace(extra)) || !bytes.Contains(after.Data[brokerv1.TrustBundleKey], rootSecret.Data[corev1.TLSCertKey]) {
			t.Error("the member's ca.crt does not hold both roots")
		}
		// The bundle alone, without the key, for pods that verify the
		// clusterset's certificates (the gateway's Envoy mounts it).
		cm, err = beta.Kube.CoreV1().ConfigMaps(setup.MemberNamespace).Get(ctx, brokerv1.TrustBundleConfigMap, metav1.GetOptions{})
		if err != nil || cm.Data[brokerv1.TrustBundleKey] != string(after.Data[brokerv1.TrustBundleKey]) || len(cm.Data) != 1 {
			t.Errorf("the member's trust bundle ConfigMap %v (%v), want exactly the Secret's ca.crt", cm.Data, err)
		}
	})

	t.Run("OperatorRootImported", func(t *testing.T) {
		certFile, keyFile := writeForeignRoot(t)
		mustCLI("broker", "install", "--context", "broker", "--namespace", "imported-broker", "--root-ca-cert", certFile, "--root-ca-key", keyFile)
		// Again with the same flags: nothing to do, nothing refused.
		out := mustCLI("broker", "install", "--context", "broker", "--namespace", "imported-broker", "--root-ca-cert", certFile, "--root-ca-key", keyFile)
		if !strings.Contains(out, "secrets/isthmus-root-ca unchanged") {
			t.Errorf("second import:\n%s", out)
		}
		s := getSecret(t, hub, "imported-broker", brokerv1.RootCASecret)
		want, _ := os.ReadFile(certFile)
		if !bytes.Equal(bytes.TrimSpace(s.Data[corev1.TLSCertKey]), bytes.TrimSpace(want)) {
			t.Error("the imported root is not the operator's")
		}
		inter, err := newPKI(0, time.Hour).IssueIntermediate(setup.CAMaterial{Cert: s.Data[corev1.TLSCertKey], Key: s.Data[corev1.TLSPrivateKeyKey]}, brokerv1.DefaultClustersetDomain, "gamma")
		if err != nil {
			t.Fatalf("issuing under the imported root: %v", err)
		}
		if _, err := identity.LoadCA(inter.Cert, inter.Key, s.Data[brokerv1.TrustBundleKey]); err != nil {
			t.Errorf("intermediate under the imported root: %v", err)
		}
	})
}

func clientsOf(t *testing.T, c *cluster.Cluster) *setup.Clients {
	t.Helper()
	cl, err := setup.NewClients(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// brokerClientsOf acts on the broker with the credential join stored in
// the member, as its agent does.
func brokerClientsOf(t *testing.T, member *setup.Clients) *setup.Clients {
	t.Helper()
	s := getSecret(t, member, setup.MemberNamespace, setup.BrokerSecret)
	cfg, err := clientcmd.RESTConfigFromKubeConfig(s.Data[setup.BrokerSecretKey])
	if err != nil {
		t.Fatal(err)
	}
	c, err := setup.NewClients(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func getSecret(t *testing.T, c *setup.Clients, ns, name string) *corev1.Secret {
	t.Helper()
	s, err := c.Kube.CoreV1().Secrets(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func loadMemberCA(t *testing.T, member *setup.Clients) *identity.CA {
	t.Helper()
	s := getSecret(t, member, setup.MemberNamespace, brokerv1.IntermediateCASecret)
	if s.Type != corev1.SecretTypeTLS {
		t.Errorf("Secret %s is of type %s, want %s", s.Name, s.Type, corev1.SecretTypeTLS)
	}
	ca, err := identity.LoadCA(s.Data[corev1.TLSCertKey], s.Data[corev1.TLSPrivateKeyKey], s.Data[brokerv1.TrustBundleKey])
	if err != nil {
		t.Fatalf("loading the member's intermediate: %v", err)
	}
	return ca
}

// writeForeignRoot writes the PEM files of a root an operator might bring.
func writeForeignRoot(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	root, err := identity.NewRoot(brokerv1.DefaultClustersetDomain, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, key, _, err := root.PEM()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "root.crt"), filepath.Join(dir, "root.key")
	if err := os.WriteFile(certFile, cert, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, key, 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}
