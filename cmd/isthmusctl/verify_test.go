package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/isthmus-dev/isthmus/cmd/internal/buildinfo"
	"github.com/isthmus-dev/isthmus/cmd/internal/probe"
)

// TestVerifyObjects: the pods run the image's hidden probe subcommands
// with what they need (the server its cluster id as its answer, the
// client the clusterset name of the Service) under the restricted Pod
// Security profile; the Service selects the server and the export names
// it.
func TestVerifyObjects(t *testing.T) {
	o := verifyObjects{namespace: "isthmus-verify", image: "example.test/isthmus:v1"}
	server := o.serverPod("east")
	client := o.clientPod(12 * time.Minute)
	for _, tc := range []struct {
		pod  *corev1.Pod
		args string
	}{
		{server, "probe serve --listen :8080 --reply east"},
		{client, "probe client --name verify.isthmus-verify.svc.clusterset.local --port 80 --every 200ms --timeout 1s --for 12m0s"},
	} {
		c := tc.pod.Spec.Containers[0]
		if got := strings.Join(c.Args, " "); got != tc.args {
			t.Errorf("%s args %q, want %q", tc.pod.Name, got, tc.args)
		}
		if c.Image != o.image || tc.pod.Namespace != o.namespace {
			t.Errorf("%s: image %s in %s", tc.pod.Name, c.Image, tc.pod.Namespace)
		}
		sc, psc := c.SecurityContext, tc.pod.Spec.SecurityContext
		if !*psc.RunAsNonRoot || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault ||
			*sc.AllowPrivilegeEscalation || !*sc.ReadOnlyRootFilesystem || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
			t.Errorf("%s is not restricted: %+v %+v", tc.pod.Name, psc, sc)
		}
		if *tc.pod.Spec.TerminationGracePeriodSeconds != 0 || *tc.pod.Spec.AutomountServiceAccountToken {
			t.Errorf("%s: grace %d, token %v", tc.pod.Name, *tc.pod.Spec.TerminationGracePeriodSeconds, *tc.pod.Spec.AutomountServiceAccountToken)
		}
	}
	if client.Spec.RestartPolicy != corev1.RestartPolicyNever || server.Spec.Containers[0].ReadinessProbe.TCPSocket == nil {
		t.Errorf("client restart %s, server readiness %+v", client.Spec.RestartPolicy, server.Spec.Containers[0].ReadinessProbe)
	}
	svc := o.service()
	if svc.Spec.Selector[verifyLabel] != server.Labels[verifyLabel] || client.Labels[verifyLabel] == server.Labels[verifyLabel] {
		t.Errorf("the Service selects %v; server %v, client %v", svc.Spec.Selector, server.Labels, client.Labels)
	}
	if p := svc.Spec.Ports[0]; p.Port != verifyPort || p.TargetPort.StrVal != server.Spec.Containers[0].Ports[0].Name {
		t.Errorf("Service port %+v", p)
	}
	if e := o.export(); e.Name != svc.Name || e.Namespace != svc.Namespace {
		t.Errorf("export %s/%s", e.Namespace, e.Name)
	}
	if o.ns().Labels[verifyLabel] != "true" {
		t.Errorf("namespace labels %v", o.ns().Labels)
	}
	// The image of this build, tagged as make image tags it.
	want := "ghcr.io/isthmus-dev/isthmus:" + strings.ReplaceAll(buildinfo.Read().Version, "+", "-")
	if got := defaultImage(); got != want || strings.Contains(got, "+") {
		t.Errorf("default image %q, want %q", got, want)
	}
}

func TestPodState(t *testing.T) {
	running := corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}
	for _, tc := range []struct {
		name  string
		pod   corev1.Pod
		ok    bool
		words string
	}{
		{"unscheduled", corev1.Pod{}, false, "not scheduled"},
		{"creating", corev1.Pod{Spec: corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Image: "example.test/x:1"}}}, Status: corev1.PodStatus{Phase: corev1.PodPending,
			ContainerStatuses: []corev1.ContainerStatus{{State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}}}}}}, false, "(image example.test/x:1) is Pending on node n1"},
		{"no image", corev1.Pod{Spec: corev1.PodSpec{NodeName: "n1"}, Status: corev1.PodStatus{
			ContainerStatuses: []corev1.ContainerStatus{{State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ErrImagePull", Message: "example.test/x:1 not found"}}}}}}, false, "ErrImagePull: example.test/x:1 not found"},
		{"server running, not ready", corev1.Pod{Spec: corev1.PodSpec{NodeName: "n1"}, Status: corev1.PodStatus{Phase: corev1.PodRunning,
			ContainerStatuses: []corev1.ContainerStatus{{State: running}}}}, false, "Running on node n1"},
		{"server ready", corev1.Pod{Spec: corev1.PodSpec{NodeName: "n1"}, Status: corev1.PodStatus{
			ContainerStatuses: []corev1.ContainerStatus{{State: running, Ready: true}}}}, true, ""},
		{"client running", corev1.Pod{Spec: corev1.PodSpec{NodeName: "n1", RestartPolicy: corev1.RestartPolicyNever}, Status: corev1.PodStatus{
			ContainerStatuses: []corev1.ContainerStatus{{State: running}}}}, true, ""},
	} {
		ok, words := podState(&tc.pod)
		if ok != tc.ok || !strings.Contains(words, tc.words) {
			t.Errorf("%s: %v %q, want %v %q", tc.name, ok, words, tc.ok, tc.words)
		}
	}
}

// TestVerifyReadsTheClient: the steps that read the client pod's events:
// the lookup must give the import's ClusterSetIP; the first answer, and
// after a drain the first answer of the other cluster, end their steps,
// failed connections before them counted; a client that stops says why.
func TestVerifyReadsTheClient(t *testing.T) {
	newV := func(events ...probe.Event) *verification {
		ch := make(chan received, len(events))
		for _, e := range events {
			ch <- received{Event: e, at: time.Now()}
		}
		close(ch)
		return &verification{objs: verifyObjects{namespace: "ns"}, clusterSetIP: "10.97.0.5", events: ch, timeout: time.Second,
			log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	}
	ctx := context.Background()

	v := newV(probe.Event{Step: "resolve", Addrs: []string{"10.97.0.5"}, Attempts: 2, Millis: 40},
		probe.Event{Step: "connect", Err: "connection refused"},
		probe.Event{Step: "connect", Reply: "east"},
		probe.Event{Step: "connect", Reply: "east"},
		probe.Event{Step: "connect", Err: "i/o timeout"},
		probe.Event{Step: "connect", Reply: "west"})
	if d, err := v.resolve(ctx); err != nil || d != "verify.ns.svc.clusterset.local → 10.97.0.5 in the pod after 2 attempt(s), 40ms" {
		t.Errorf("resolve: %q, %v", d, err)
	}
	if got, err := v.awaitReply(ctx, func(string) bool { return true }); got != "east" || err != nil || v.failedSoFar() != ", 1 connection(s) failed before" {
		t.Errorf("first answer %q, %v, %s", got, err, v.failedSoFar())
	}
	v.failedConnected = 0
	if got, err := v.awaitReply(ctx, func(r string) bool { return r == "west" }); got != "west" || err != nil || v.failedConnected != 1 {
		t.Errorf("failover answer %q, %v, %d failed", got, err, v.failedConnected)
	}
	if _, err := v.awaitReply(ctx, func(string) bool { return true }); err == nil || !strings.Contains(err.Error(), "the client pod stopped: i/o timeout") {
		t.Errorf("after the log ended: %v", err)
	}

	// The client's own cluster serving too: only its answer ends the
	// step, another's before it counted in the detail; never answering,
	// the step fails saying who did.
	west, east := &verifyMember{id: "west"}, &verifyMember{id: "east"}
	v = newV(probe.Event{Step: "connect", Reply: "east"}, probe.Event{Step: "connect", Reply: "east"}, probe.Event{Step: "connect", Reply: "west"})
	v.client, v.servers = west, []*verifyMember{east, west}
	if got, err := v.connect(ctx); got != "west" || err != nil || v.failedSoFar() != ", no connection failed, 2 answer(s) from another cluster first" {
		t.Errorf("local answer %q, %v, %s", got, err, v.failedSoFar())
	}
	v = newV(probe.Event{Step: "connect", Reply: "east"})
	v.client, v.servers = west, []*verifyMember{east, west}
	if _, err := v.connect(ctx); err == nil || !strings.Contains(err.Error(), "only other clusters answered (1 times), never west") {
		t.Errorf("no local answer: %v", err)
	}
	v = newV(probe.Event{Step: "connect", Reply: "east"})
	v.client, v.servers = west, []*verifyMember{east}
	if got, err := v.connect(ctx); got != "east" || err != nil {
		t.Errorf("across clusters %q, %v", got, err)
	}

	if _, err := newV(probe.Event{Step: "resolve", Addrs: []string{"10.97.0.9"}}).resolve(ctx); err == nil || !strings.Contains(err.Error(), "not the ClusterSetIP 10.97.0.5") {
		t.Errorf("another address: %v", err)
	}
	if _, err := newV(probe.Event{Step: "resolve", Attempts: 50, Err: "no such host"}).resolve(ctx); err == nil || !strings.Contains(err.Error(), "did not resolve in the pod (50 attempts): no such host") {
		t.Errorf("no answer: %v", err)
	}

	// A step reports its time and, failing, why; the table shows both.
	v = newV()
	v.step(ctx, "passes", func(context.Context) (string, error) { return "fine", nil })
	v.step(ctx, "times out", func(ctx context.Context) (string, error) { <-ctx.Done(); return "pod p is Pending", ctx.Err() })
	var out bytes.Buffer
	v.table(&out, false)
	if s := out.String(); !strings.Contains(s, "passes") || !strings.Contains(s, "times out  NO") || !strings.Contains(s, "not within 1s: pod p is Pending") {
		t.Errorf("table:\n%s", s)
	}
}
