package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"runtime"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// CoreDNSImage is CoreDNS with the isthmus plugin
// (dnsserver/coredns/cmd/coredns), built and imported into every real
// node when Options.CoreDNS is set. A Corefile without an isthmus block
// makes it a stock CoreDNS.
const CoreDNSImage = "isthmus.test/coredns:v1"

// ClusterDomainCorefile is the server block of a cluster's own names, as
// kubeadm's Corefile has it, less the upstream forwarder: the harness's
// nodes reach no network beyond the clusterset. Tests add their
// clusterset.local block after it.
const ClusterDomainCorefile = `.:53 {
    errors
    health :8080
    ready :8181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }
    prometheus :9153
    cache 30
    loop
    loadbalance
}
`

// buildCoreDNS builds dnsserver/coredns's CoreDNS (its own module) for the
// host's architecture into dir and returns the binary's path.
func buildCoreDNS(ctx context.Context, dir string) (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("locating dnsserver/coredns: no caller information")
	}
	module := filepath.Join(filepath.Dir(file), "..", "..", "dnsserver", "coredns")
	bin := filepath.Join(dir, "coredns")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, "./cmd/coredns")
	cmd.Dir = module
	cmd.Env = append(cmd.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building CoreDNS in %s: %w: %s", module, err, out)
	}
	return bin, nil
}

// InstallCoreDNS runs CoreDNS (CoreDNSImage) as the member's cluster DNS,
// the way a cluster's installer does: kube-system's ServiceAccount,
// ClusterRole (what the kubernetes and isthmus plugins watch), ConfigMap
// with corefile, Deployment, and the Service kube-dns at DNSServiceIP,
// where the kubelet points every pod's resolv.conf. Called again with
// another Corefile it rolls the Deployment. It returns once a CoreDNS pod
// of this Corefile is Ready and no other is left. It needs a real node
// and Options.CoreDNS.
func (c *Cluster) InstallCoreDNS(ctx context.Context, corefile string) error {
	if c.node == nil {
		return fmt.Errorf("%s has no real node", c.Name)
	}
	const ns, name = metav1.NamespaceSystem, "coredns"
	labels := map[string]string{"k8s-app": "kube-dns"}
	sum := sha256.Sum256([]byte(corefile))
	hash := hex.EncodeToString(sum[:8])
	meta := metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels}
	objects := []func() error{
		func() error {
			_, err := c.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: meta}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := c.Client.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
				ObjectMeta: metav1.ObjectMeta{Name: "system:coredns"},
				Rules: []rbacv1.PolicyRule{
					{APIGroups: []string{""}, Resources: []string{"endpoints", "services", "pods", "namespaces"}, Verbs: []string{"list", "watch"}},
					{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
					{APIGroups: []string{"multicluster.x-k8s.io"}, Resources: []string{"serviceimports"}, Verbs: []string{"list", "watch"}},
				},
			}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := c.Client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: "system:coredns"},
				RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "system:coredns"},
				Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: name, Namespace: ns}},
			}, metav1.CreateOptions{})
			return err
		},
		func() error {
			_, err := c.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Name: "kube-dns", Namespace: ns, Labels: labels},
				Spec: corev1.ServiceSpec{
					Selector:  labels,
					ClusterIP: c.DNSServiceIP.String(),
					Ports: []corev1.ServicePort{
						{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(53)},
						{Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(53)},
					},
				},
			}, metav1.CreateOptions{})
			return err
		},
	}
	for _, create := range objects {
		if err := create(); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("%s: installing CoreDNS: %w", c.Name, err)
		}
	}
	cm := &corev1.ConfigMap{ObjectMeta: meta, Data: map[string]string{"Corefile": corefile}}
	if _, err := c.Client.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{}); apierrors.IsNotFound(err) {
		_, err = c.Client.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("%s: CoreDNS's ConfigMap: %w", c.Name, err)
		}
	} else if err != nil {
		return fmt.Errorf("%s: CoreDNS's ConfigMap: %w", c.Name, err)
	}
	dep := coreDNSDeployment(meta, labels, hash)
	if _, err := c.Client.AppsV1().Deployments(ns).Update(ctx, dep, metav1.UpdateOptions{}); apierrors.IsNotFound(err) {
		_, err = c.Client.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("%s: CoreDNS's Deployment: %w", c.Name, err)
		}
	} else if err != nil {
		return fmt.Errorf("%s: CoreDNS's Deployment: %w", c.Name, err)
	}
	var last string
	err := poll(ctx, func() bool {
		pods, err := c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "k8s-app=kube-dns"})
		if err != nil {
			last = err.Error()
			return false
		}
		ready := 0
		for _, p := range pods.Items {
			if p.Annotations["isthmus.test/corefile"] != hash {
				last = "an older CoreDNS pod is still there"
				return false
			}
			if podReady(p) {
				ready++
			}
		}
		last = fmt.Sprintf("%d of %d CoreDNS pods Ready", ready, len(pods.Items))
		return len(pods.Items) == 1 && ready == 1
	})
	if err != nil {
		return fmt.Errorf("%s: waiting for CoreDNS: %w (%s)", c.Name, err, last)
	}
	return nil
}

// coreDNSDeployment is one CoreDNS replica under the restricted Pod
// Security profile: port 53 without a capability, by the namespaced
// sysctl that lowers the first unprivileged port. The Corefile's hash in
// the pod template rolls it when the Corefile changes.
func coreDNSDeployment(meta metav1.ObjectMeta, labels map[string]string, hash string) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: meta,
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](1),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Strategy: appsv1.DeploymentStrategy{Type: appsv1.RecreateDeploymentStrategyType},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: map[string]string{"isthmus.test/corefile": hash}},
				Spec: corev1.PodSpec{
					ServiceAccountName: meta.Name,
					DNSPolicy:          corev1.DNSDefault,
					SecurityContext: &corev1.PodSecurityContext{
						RunAsNonRoot:   ptr.To(true),
						SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
						Sysctls:        []corev1.Sysctl{{Name: "net.ipv4.ip_unprivileged_port_start", Value: "53"}},
					},
					Containers: []corev1.Container{{
						Name: "coredns", Image: CoreDNSImage, ImagePullPolicy: corev1.PullNever,
						Args: []string{"-conf", "/etc/coredns/Corefile"},
						Ports: []corev1.ContainerPort{
							{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
							{Name: "dns-tcp", ContainerPort: 53, Protocol: corev1.ProtocolTCP},
						},
						VolumeMounts: []corev1.VolumeMount{{Name: "config", MountPath: "/etc/coredns", ReadOnly: true}},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromInt32(8181)}},
							PeriodSeconds: 1,
						},
						LivenessProbe: &corev1.Probe{
							ProbeHandler:     corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/health", Port: intstr.FromInt32(8080)}},
							PeriodSeconds:    10,
							FailureThreshold: 5,
						},
						SecurityContext: &corev1.SecurityContext{
							AllowPrivilegeEscalation: ptr.To(false),
							ReadOnlyRootFilesystem:   ptr.To(true),
							Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
						},
					}},
					Volumes: []corev1.Volume{{Name: "config", VolumeSource: corev1.VolumeSource{
						ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: meta.Name}},
					}}},
				},
			},
		},
	}
}

func podReady(p corev1.Pod) bool {
	if p.DeletionTimestamp != nil {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// poll calls ok every 200 ms until it returns true or ctx ends.
func poll(ctx context.Context, ok func() bool) error {
	for !ok() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return nil
}
