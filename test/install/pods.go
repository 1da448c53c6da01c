package install

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/isthmus-dev/isthmus/test/cluster"
)

// RunTestServer runs cluster.TestServerImage as a one-pod Deployment
// with a Service of the same name, under the restricted Pod Security
// profile, and returns its Ready pod. args replace the image's default
// (serving HTTP), e.g. "load", URL.
func RunTestServer(ctx context.Context, t testing.TB, m *cluster.Cluster, ns, name string, args ...string) corev1.Pod {
	t.Helper()
	labels := map[string]string{"app": name}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](1),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					SecurityContext: &corev1.PodSecurityContext{
						RunAsNonRoot:   ptr.To(true),
						SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
					},
					Containers: []corev1.Container{{
						Name: "server", Image: cluster.TestServerImage, ImagePullPolicy: corev1.PullNever, Args: args,
						Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}},
							PeriodSeconds: 1,
						},
						SecurityContext: &corev1.SecurityContext{
							AllowPrivilegeEscalation: ptr.To(false),
							ReadOnlyRootFilesystem:   ptr.To(true),
							Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
						},
					}},
				},
			},
		},
	}
	if _, err := m.Client.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatalf("%s: %v", m.Name, err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.ServiceSpec{Selector: labels,
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}}},
	}
	if _, err := m.Client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatalf("%s: %v", m.Name, err)
	}
	for {
		pods, err := m.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + name})
		if err == nil {
			for _, p := range pods.Items {
				if podTrouble(p) == "" {
					return p
				}
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: pod of %s not Ready: %v", m.Name, name, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Eventually execs command in pod until ok accepts its output, and
// returns that output; it fails the test with the last output or error
// when ctx ends.
func Eventually(ctx context.Context, t testing.TB, m *cluster.Cluster, pod corev1.Pod, ok func(string) bool, command ...string) string {
	t.Helper()
	var last string
	for {
		out, err := m.Exec(ctx, pod, command...)
		if err == nil && ok(out) {
			return out
		}
		last = fmt.Sprintf("%q %v", out, err)
		select {
		case <-ctx.Done():
			t.Fatalf("%s: %s in %s: last %s", m.Name, strings.Join(command, " "), pod.Name, last)
			return ""
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// Restarts describes every restarted container of the chart's pods in m:
// how its last run ended and the tail of that run's log, so a test that
// finds a restart says why instead of only that it happened.
func Restarts(ctx context.Context, m *cluster.Cluster) ([]string, error) {
	pods, err := m.Client.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range pods.Items {
		for _, c := range p.Status.ContainerStatuses {
			if c.RestartCount == 0 {
				continue
			}
			why := "no last state recorded"
			if t := c.LastTerminationState.Terminated; t != nil {
				why = fmt.Sprintf("exit %d (%s) at %s", t.ExitCode, t.Reason, t.FinishedAt.UTC().Format(time.RFC3339))
			}
			tail := int64(15)
			logs, err := m.Client.CoreV1().Pods(Namespace).GetLogs(p.Name, &corev1.PodLogOptions{Container: c.Name, Previous: true, TailLines: &tail}).DoRaw(ctx)
			if err != nil {
				logs = []byte("(its log: " + err.Error() + ")")
			}
			out = append(out, fmt.Sprintf("%s: pod %s container %s restarted %d times; the last run: %s; its log's end:\n%s",
				m.Name, p.Name, c.Name, c.RestartCount, why, strings.TrimSpace(string(logs))))
		}
	}
	return out, nil
}
