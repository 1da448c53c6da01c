package tunnel

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-dev/isthmus/test/netnstest"
)

// TestFailoverToSecondGatewayWithSameKey: tnl-b runs a standby gateway in
// another namespace, at another underlay address, with the same key from
// the same Secret. While the first holds the gateway Lease the standby
// runs no device. When the first dies (SIGKILL, so its Lease must expire)
// the standby takes over. It advertises the same endpoint as the first (as
// replicas behind one address do), so the broker record does not change;
// tnl-a learns the new address by WireGuard roaming.
func TestFailoverToSecondGatewayWithSameKey(t *testing.T) {
	dumpLogsOnFailure(t)
	ctx := context.Background()
	a, b := w.members[0], w.members[1]
	b2 := &member{id: b.id, ns: "tnlb2", dev: "tnlwgb2", underlay: "192.0.2.12", podCIDR: b.podCIDR, svcCIDR: b.svcCIDR, pod: b.pod}
	if err := plumb(b2); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = netnstest.Sh("ip", "netns", "del", b2.ns) })
	u := strings.TrimPrefix(w.cs.Broker.Config.Host, "https://")
	stopFwd, err := netnstest.Forward(b2.ns, u)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stopFwd)
	pod, err := listenUDPIn(b2.ns, net.JoinHostPort(b2.pod, strconv.Itoa(podPort)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pod.Close() })
	go echo(pod)

	before, err := w.record(ctx, b.id)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.start(b2, "--endpoint", b.endpoint()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = b2.stop(syscall.SIGTERM)
		if t.Failed() {
			t.Logf("--- standby log ---\n%s", tail(b2.log(), 6000))
		}
	})
	time.Sleep(1500 * time.Millisecond)
	if _, err := netnstest.Sh("ip", "-n", b2.ns, "link", "show", b2.dev); err == nil {
		t.Fatal("the standby brought its device up while the leader holds the Lease")
	}
	if code, _, err := scrape(ctx, b2, "/readyz"); err != nil || code == 200 {
		t.Errorf("the standby's /readyz answers %d (%v), want not ready", code, err)
	}

	p := startPinger(t, a, b, 10*time.Millisecond)
	defer p.halt()
	time.Sleep(300 * time.Millisecond)
	killed := time.Now()
	if err := b.stop(syscall.SIGKILL); err == nil {
		t.Fatal("the daemon exited cleanly on SIGKILL?")
	}
	var back time.Time
	eventually(t, leaseDuration+8*time.Second, "replies from the standby", func() error {
		var ok bool
		if back, ok = p.firstReplyAfter(killed.Add(50 * time.Millisecond)); !ok {
			return fmt.Errorf("no reply yet")
		}
		return nil
	})
	t.Logf("failover: traffic back %s after the leader was killed (its Lease lasts %s); longest reply gap %s",
		back.Sub(killed).Round(time.Millisecond), leaseDuration, p.longestGap().Round(time.Millisecond))
	if d := back.Sub(killed); d > leaseDuration+3*time.Second {
		t.Errorf("failover took %s after the kill, want within the Lease (%s) + 3s", d, leaseDuration)
	}
	after, err := w.record(ctx, b.id)
	if err != nil {
		t.Fatal(err)
	}
	if after.Generation != before.Generation || *after.Spec.WireGuard != *before.Spec.WireGuard {
		t.Errorf("the record's spec changed in the failover: generation %d -> %d, %+v -> %+v",
			before.Generation, after.Generation, before.Spec.WireGuard, after.Spec.WireGuard)
	}
	if ep := wgDevice(t, a).peers[before.Spec.WireGuard.PublicKey].endpoint; ep != b2.underlay+":51820" {
		t.Errorf("tnl-a sends to %s for tnl-b, want the standby's %s:51820", ep, b2.underlay)
	}

	// A planned handover back to the first gateway: it starts as the
	// standby, and the active one shuts down cleanly, releasing the Lease,
	// so the takeover need not wait for the Lease to expire.
	if err := w.start(b); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	stopped := time.Now()
	if err := b2.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("the active standby did not shut down cleanly: %v", err)
	}
	exited := time.Now() // its device is gone: replies from now on come from b
	eventually(t, leaseDuration+5*time.Second, "replies after the handover", func() error {
		var ok bool
		if back, ok = p.firstReplyAfter(exited); !ok {
			return fmt.Errorf("no reply yet")
		}
		return nil
	})
	t.Logf("planned handover (SIGTERM releases the Lease): traffic back %s after the stop began", back.Sub(stopped).Round(time.Millisecond))
	if d := back.Sub(stopped); d > leaseDuration {
		t.Errorf("the handover took %s, as long as a Lease expiry: the Lease was not released", d)
	}
	if err := w.waitMeshUp(ctx, 10*time.Second); err != nil {
		t.Fatal(err)
	}
}

// TestKeyRotationThroughBroker: `isthmusctl tunnel rotate-key` writes a
// new key to tnl-b's Secret; it reaches tnl-b's device and record within a resync, and
// the other clusters swap the peer from the record: connectivity returns
// and the old key is gone from their devices.
func TestKeyRotationThroughBroker(t *testing.T) {
	dumpLogsOnFailure(t)
	ctx := context.Background()
	a, b, c := w.members[0], w.members[1], w.members[2]
	old := wgDevice(t, b).pub
	recBefore, err := w.record(ctx, b.id)
	if err != nil {
		t.Fatal(err)
	}
	if recBefore.Status.Tunnel == nil || recBefore.Status.Tunnel.KeyGeneration < 1 {
		t.Fatalf("tnl-b's record publishes no key generation: %+v", recBefore.Status.Tunnel)
	}
	genBefore := recBefore.Status.Tunnel.KeyGeneration
	p := startPinger(t, a, b, 10*time.Millisecond)
	defer p.halt()
	rotated := time.Now()
	out, err := netnstest.Sh(w.ctl, "tunnel", "rotate-key", "--kubeconfig", w.kc, "--namespace", b.id+"-system")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("isthmusctl: %s", strings.TrimSpace(out))
	s, err := w.cs.Broker.Client.CoreV1().Secrets(b.id+"-system").Get(ctx, "isthmus-tunnel-key", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	k, err := wgtypes.ParseKey(string(s.Data["privateKey"]))
	if err != nil {
		t.Fatal(err)
	}
	if k.PublicKey().String() == old || !strings.Contains(out, fmt.Sprintf("%s -> %s (generation %d)", old, k.PublicKey(), genBefore+1)) {
		t.Fatalf("isthmusctl did not rotate %s generation %d to the Secret's new key %s: %s", old, genBefore, k.PublicKey(), out)
	}
	took := eventually(t, 15*time.Second, "peers on the new key", func() error {
		for _, mb := range []*member{a, c} {
			peers := wgDevice(t, mb).peers
			if _, ok := peers[old]; ok {
				return fmt.Errorf("%s still has the old key", mb.id)
			}
			if _, ok := peers[k.PublicKey().String()]; !ok {
				return fmt.Errorf("%s lacks the new key", mb.id)
			}
		}
		return nil
	})
	eventually(t, 5*time.Second, "tnl-a reaching tnl-b on the new key", func() error {
		if _, ok := p.firstReplyAfter(rotated.Add(took)); !ok {
			return fmt.Errorf("no reply since the peers switched")
		}
		return nil
	})
	rec, err := w.record(ctx, b.id)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Spec.WireGuard.PublicKey != k.PublicKey().String() {
		t.Errorf("tnl-b's record has key %s, want the rotated %s", rec.Spec.WireGuard.PublicKey, k.PublicKey())
	}
	eventually(t, 5*time.Second, "the new key generation in tnl-b's status.tunnel", func() error {
		rec, err := w.record(ctx, b.id)
		if err != nil {
			return err
		}
		if rec.Status.Tunnel == nil || rec.Status.Tunnel.KeyGeneration != genBefore+1 {
			return fmt.Errorf("status.tunnel is %+v, want keyGeneration %d", rec.Status.Tunnel, genBefore+1)
		}
		return nil
	})
	t.Logf("key rotation: peers switched %s after the Secret changed (resync %s); longest reply gap %s",
		took.Round(time.Millisecond), resync, p.longestGap().Round(time.Millisecond))
	if err := w.waitMeshUp(ctx, 10*time.Second); err != nil {
		t.Fatal(err)
	}
}
