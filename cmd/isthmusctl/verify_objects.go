package main

import (
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/isthmus-dev/isthmus/cmd/internal/buildinfo"
)

// What verify creates: in each exporting cluster a server pod, its
// Service and ServiceExport; in the client cluster a client pod. All of
// it in one namespace of its own (-n), which cleanup deletes whole.
const (
	verifyService    = "verify"
	verifyServerPod  = "verify-server"
	verifyClientPod  = "verify-client"
	verifyServerPort = 8080
	verifyPort       = 80
	verifyLabel      = "isthmus.dev/verify"
	// imageRepository is the chart's image.repository.
	imageRepository = "ghcr.io/isthmus-dev/isthmus"
)

// defaultImage is the isthmus image of this client's version, as `make
// image` tags it (the VCS version, "+" being no tag character, as "-"):
// the pods run the same build as the CLI, as the chart's default image
// is the chart's own version.
func defaultImage() string {
	return imageRepository + ":" + strings.ReplaceAll(buildinfo.Read().Version, "+", "-")
}

// verifyObjects are the objects of one verify run.
type verifyObjects struct {
	namespace, image string
}

func (o verifyObjects) host() string {
	return verifyService + "." + o.namespace + ".svc.clusterset.local"
}

func (o verifyObjects) ns() *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: o.namespace, Labels: map[string]string{verifyLabel: "true"}}}
}

// serverPod answers every connection with the cluster's id.
func (o verifyObjects) serverPod(clusterID string) *corev1.Pod {
	p := o.pod(verifyServerPod, "server", []string{"probe", "serve", "--listen", ":" + strconv.Itoa(verifyServerPort), "--reply", clusterID})
	c := &p.Spec.Containers[0]
	c.Ports = []corev1.ContainerPort{{Name: "probe", ContainerPort: verifyServerPort}}
	c.ReadinessProbe = &corev1.Probe{
		ProbeHandler:  corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromString("probe")}},
		PeriodSeconds: 1,
	}
	return p
}

// clientPod resolves the service's clusterset name with the pod's own
// resolver and connects to it every 200 ms for up to keepFor.
func (o verifyObjects) clientPod(keepFor time.Duration) *corev1.Pod {
	p := o.pod(verifyClientPod, "client", []string{"probe", "client", "--name", o.host(), "--port", strconv.Itoa(verifyPort),
		"--every", "200ms", "--timeout", "1s", "--for", keepFor.String()})
	p.Spec.RestartPolicy = corev1.RestartPolicyNever
	return p
}

// pod runs the isthmus image's hidden probe subcommand under the
// restricted Pod Security profile, as the chart's pods run.
func (o verifyObjects) pod(name, role string, args []string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: o.namespace, Labels: map[string]string{verifyLabel: role}},
		Spec: corev1.PodSpec{
			// Drained at once: failover is shown, not graceful shutdown.
			TerminationGracePeriodSeconds: ptr.To[int64](0),
			AutomountServiceAccountToken:  ptr.To(false),
			SecurityContext: &corev1.PodSecurityContext{
				RunAsNonRoot:   ptr.To(true),
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			Containers: []corev1.Container{{
				Name: "probe", Image: o.image, ImagePullPolicy: corev1.PullIfNotPresent, Args: args,
				SecurityContext: &corev1.SecurityContext{
					AllowPrivilegeEscalation: ptr.To(false),
					ReadOnlyRootFilesystem:   ptr.To(true),
					Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				},
			}},
		},
	}
}

func (o verifyObjects) service() *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: verifyService, Namespace: o.namespace},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{verifyLabel: "server"},
			Ports:    []corev1.ServicePort{{Name: "probe", Protocol: corev1.ProtocolTCP, Port: verifyPort, TargetPort: intstr.FromString("probe")}},
		},
	}
}

func (o verifyObjects) export() *mcsv1beta1.ServiceExport {
	return &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Name: verifyService, Namespace: o.namespace}}
}
