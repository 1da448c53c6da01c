package tunnel

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-dev/isthmus/test/netnstest"
)

// TestHandoverKeepsTheDataPath: a tunnel started with
// --handover-daemonset, stopped (SIGTERM) while that DaemonSet exists — a
// pod restart or upgrade — leaves its device, routes and rule to the next
// process: traffic routed to the other cluster meanwhile is dropped, never
// refused for want of a route (so TCP retransmits and connections
// survive), and the next process attaches to the same interface and
// carries traffic again. With the DaemonSet gone (an uninstall) the same
// stop removes everything, as a tunnel without the flag does.
func TestHandoverKeepsTheDataPath(t *testing.T) {
	dumpLogsOnFailure(t)
	a, b := w.members[0], w.members[1]
	ctx := context.Background()
	ns := a.id + "-system"
	const name = "isthmus-tunnel"
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": name}},
				Spec: corev1.PodSpec{
					NodeSelector: map[string]string{"isthmus.test/none": "none"},
					Containers:   []corev1.Container{{Name: "tunnel", Image: "isthmus.test/none"}},
				},
			},
		},
	}
	dsClient := w.cs.Broker.Client.AppsV1().DaemonSets(ns)
	if _, err := dsClient.Create(ctx, ds, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = dsClient.Delete(ctx, name, metav1.DeleteOptions{}) }()
	handover := []string{"--handover-daemonset", name}
	// a runs with the flag from here on.
	if err := a.stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := w.start(a, handover...); err != nil {
		t.Fatal(err)
	}
	if err := w.waitMeshUp(ctx, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	index := func() string {
		out, err := netnstest.Sh("ip", "-n", a.ns, "-o", "link", "show", a.dev)
		if err != nil {
			return ""
		}
		return strings.SplitN(out, ":", 2)[0]
	}
	before := index()

	p := startPinger(t, a, b, 10*time.Millisecond)
	defer p.halt()
	eventually(t, 5*time.Second, "replies before the restart", func() error {
		if _, ok := p.firstReplyAfter(time.Now().Add(-100 * time.Millisecond)); !ok {
			return errNoReply
		}
		return nil
	})
	stopped := time.Now()
	if err := a.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("the tunnel did not exit cleanly: %v", err)
	}
	if !strings.Contains(a.log(), "device, routes and rules kept for the next tunnel") {
		t.Fatal("the tunnel did not hand its data path over")
	}
	if idx := index(); idx == "" || idx != before {
		t.Fatalf("the device went with the process: index %q, was %q", idx, before)
	}
	if routes := routesOf(t, a); !strings.Contains(routes, b.podCIDR) {
		t.Fatalf("the route to %s went with the process:\n%s", b.podCIDR, routes)
	}
	time.Sleep(300 * time.Millisecond)
	if _, ok := p.firstReplyAfter(stopped.Add(200 * time.Millisecond)); ok {
		t.Fatal("replies kept coming with no tunnel process: the traffic does not depend on it")
	}
	started := time.Now()
	if err := w.start(a, handover...); err != nil {
		t.Fatal(err)
	}
	var back time.Time
	eventually(t, 10*time.Second, "replies after the restart", func() error {
		var ok bool
		if back, ok = p.firstReplyAfter(started); !ok {
			return errNoReply
		}
		return nil
	})
	t.Logf("handover: traffic back %v after the new process started, %v after the old one was told to stop; %d echoes refused to send meanwhile",
		back.Sub(started).Round(time.Millisecond), back.Sub(stopped).Round(time.Millisecond), p.sendErrors())
	if n := p.sendErrors(); n > 0 {
		t.Errorf("%d echoes found no route during the handover: the routes went with the process", n)
	}
	if !strings.Contains(a.log(), "attached to the TUN interface the previous tunnel kept") {
		t.Error("the new tunnel did not attach to the kept interface")
	}
	if idx := index(); idx != before {
		t.Errorf("the new tunnel made a new interface (index %s, was %s)", idx, before)
	}

	// Uninstall: the DaemonSet goes first, and the stop cleans up.
	if err := dsClient.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := a.stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(a.log(), "tunnel stopped; peers and routes removed") {
		t.Error("without its DaemonSet the tunnel did not clean up")
	}
	if _, err := netnstest.Sh("ip", "-n", a.ns, "link", "show", a.dev); err == nil {
		t.Error("the device was left after an uninstall")
	}
	if err := w.start(a); err != nil {
		t.Fatal(err)
	}
	if err := w.waitMeshUp(ctx, 10*time.Second); err != nil {
		t.Fatal(err)
	}
}

var errNoReply = errors.New("no reply yet")
