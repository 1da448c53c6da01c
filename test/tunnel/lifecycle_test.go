package tunnel

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/test/netnstest"
)

// pinger sends a numbered echo from one pod to another every interval and
// records when replies come back.
type pinger struct {
	mu      sync.Mutex
	replies []time.Time
	// sendErrs counts echoes the kernel refused to send (no route).
	sendErrs int
	stop     chan struct{}
	done     chan struct{}
}

func startPinger(t *testing.T, from, to *member, interval time.Duration) *pinger {
	t.Helper()
	c, err := listenUDPIn(from.ns, net.JoinHostPort(from.pod, "0"))
	if err != nil {
		t.Fatal(err)
	}
	p := &pinger{stop: make(chan struct{}), done: make(chan struct{})}
	dst := &net.UDPAddr{IP: net.ParseIP(to.pod), Port: podPort}
	go func() {
		buf := make([]byte, 64)
		for {
			n, _, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			if n > 0 {
				p.mu.Lock()
				p.replies = append(p.replies, time.Now())
				p.mu.Unlock()
			}
		}
	}()
	go func() {
		defer close(p.done)
		defer c.Close()
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-p.stop:
				return
			case <-tick.C:
				if _, err := c.WriteToUDP([]byte(fmt.Sprintf("ping-%d", i)), dst); err != nil {
					p.mu.Lock()
					p.sendErrs++
					p.mu.Unlock()
				}
			}
		}
	}()
	return p
}

func (p *pinger) halt() {
	close(p.stop)
	<-p.done
}

// firstReplyAfter is the first reply at or after t.
func (p *pinger) firstReplyAfter(t time.Time) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range p.replies {
		if !r.Before(t) {
			return r, true
		}
	}
	return time.Time{}, false
}

func (p *pinger) sendErrors() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sendErrs
}

// longestGap is the longest time between consecutive replies.
func (p *pinger) longestGap() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	var gap time.Duration
	for i := 1; i < len(p.replies); i++ {
		gap = max(gap, p.replies[i].Sub(p.replies[i-1]))
	}
	return gap
}

// TestRestartWithSameKeyRecoversWithin2s: the gateway process of tnl-a
// dies (SIGKILL: no clean shutdown) and starts again; it reads the same
// key from its Secret, so tnl-b needs no broker change, and persistent
// keepalive starts a handshake at once. Pod traffic from tnl-b must flow
// again within 2 s of the new process starting.
func TestRestartWithSameKeyRecoversWithin2s(t *testing.T) {
	dumpLogsOnFailure(t)
	a, b := w.members[0], w.members[1]
	pubBefore := wgDevice(t, a).pub
	p := startPinger(t, b, a, 10*time.Millisecond)
	defer p.halt()
	time.Sleep(300 * time.Millisecond)
	if _, ok := p.firstReplyAfter(time.Now().Add(-200 * time.Millisecond)); !ok {
		t.Fatal("no replies before the restart")
	}
	killed := time.Now()
	if err := a.stop(syscall.SIGKILL); err == nil {
		t.Fatal("the daemon exited cleanly on SIGKILL?")
	}
	time.Sleep(500 * time.Millisecond)
	if _, ok := p.firstReplyAfter(killed.Add(200 * time.Millisecond)); ok {
		t.Fatal("replies kept coming after the gateway died: the traffic does not depend on it")
	}
	started := time.Now()
	if err := w.start(a); err != nil {
		t.Fatal(err)
	}
	var back time.Time
	eventually(t, 5*time.Second, "replies after the restart", func() error {
		var ok bool
		if back, ok = p.firstReplyAfter(started); !ok {
			return fmt.Errorf("no reply yet")
		}
		return nil
	})
	recovery := back.Sub(started)
	t.Logf("restart with the same key: traffic back %s after the new process started; outage %s (kill to first reply, including the 500 ms the test waited before restarting); longest reply gap %s",
		recovery.Round(time.Millisecond), back.Sub(killed).Round(time.Millisecond), p.longestGap().Round(time.Millisecond))
	if recovery > 2*time.Second {
		t.Errorf("traffic came back %s after the restart, want within 2s", recovery)
	}
	if pub := wgDevice(t, a).pub; pub != pubBefore {
		t.Errorf("the restarted gateway has key %s, want the persisted %s", pub, pubBefore)
	}
	if err := w.waitMeshUp(context.Background(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
}

// TestHealthMetricsAndReadiness: /healthz and /readyz answer, the metrics
// come from the device at scrape time, the echo probe measures RTT, and a
// dead remote gateway turns Error within a few probes on the record and
// in the metrics, then Connected again when it returns.
func TestHealthMetricsAndReadiness(t *testing.T) {
	dumpLogsOnFailure(t)
	ctx := context.Background()
	a, c := w.members[0], w.members[2]
	for _, path := range []string{"/healthz", "/readyz"} {
		code, body, err := scrape(ctx, a, path)
		if err != nil || code != 200 {
			t.Errorf("%s: %d %q %v", path, code, body, err)
		}
	}
	eventually(t, 10*time.Second, "tnl-c Connected in tnl-a's metrics with probe RTTs", func() error {
		_, body, err := scrape(ctx, a, "/metrics")
		if err != nil {
			return err
		}
		for _, want := range []string{
			`isthmus_tunnel_peer_state{remote_cluster="tnl-c",state="Connected"} 1`,
			`isthmus_tunnel_probe_rtt_seconds_count{remote_cluster="tnl-c"}`,
			`isthmus_tunnel_peer_receive_bytes_total{remote_cluster="tnl-c"}`,
			`isthmus_tunnel_peer_last_handshake_timestamp_seconds{remote_cluster="tnl-c"}`,
			`isthmus_tunnel_peers{state="Connected"} 2`,
			`isthmus_tunnel_reconcile_duration_seconds_count`,
		} {
			if !strings.Contains(body, want) {
				return fmt.Errorf("metrics lack %s:\n%s", want, grep(body, "isthmus_tunnel_"))
			}
		}
		return nil
	})
	eventually(t, 10*time.Second, "TunnelPeersConnected on tnl-a's record", func() error {
		rec, err := w.record(ctx, a.id)
		if err != nil {
			return err
		}
		cond := condition(rec, "TunnelPeersConnected")
		if cond == nil || cond.Status != "True" || !strings.Contains(cond.Message, "connected to 2 clusters: tnl-b; tnl-c") {
			return fmt.Errorf("TunnelPeersConnected is %+v", cond)
		}
		return nil
	})

	eventually(t, 10*time.Second, "status.tunnel on tnl-a's record with both peers Connected", func() error {
		rec, err := w.record(ctx, a.id)
		if err != nil {
			return err
		}
		ts := rec.Status.Tunnel
		if ts == nil || ts.Implementation != "userspace" || !ts.Offload || ts.KeyGeneration < 1 {
			return fmt.Errorf("status.tunnel is %+v", ts)
		}
		for _, mb := range []*member{w.members[1], c} {
			p := peerStatus(ts, mb.id)
			if p == nil || p.State != brokerv1.TunnelPeerConnected || p.Reason != "Healthy" || p.Endpoint != mb.endpoint() ||
				p.LastHandshakeTime == nil || p.RTTMicros <= 0 {
				return fmt.Errorf("%s's peer status is %+v", mb.id, p)
			}
		}
		return nil
	})

	if err := c.stop(syscall.SIGKILL); err == nil {
		t.Fatal("the daemon exited cleanly on SIGKILL?")
	}
	peerDown := eventually(t, 10*time.Second, "tnl-c Error in tnl-a's status.tunnel.peers", func() error {
		rec, err := w.record(ctx, a.id)
		if err != nil {
			return err
		}
		if p := peerStatus(rec.Status.Tunnel, c.id); p == nil || p.State != brokerv1.TunnelPeerError || p.Reason != "ProbesLost" {
			return fmt.Errorf("tnl-c's peer status is %+v", p)
		}
		if p := peerStatus(rec.Status.Tunnel, w.members[1].id); p == nil || p.State != brokerv1.TunnelPeerConnected {
			return fmt.Errorf("tnl-b's peer status is %+v, want Connected still", p)
		}
		return nil
	})
	t.Logf("a dead remote gateway was Error in status.tunnel.peers after %s", peerDown.Round(time.Millisecond))
	took := eventually(t, 10*time.Second, "tnl-c Error on tnl-a's record", func() error {
		rec, err := w.record(ctx, a.id)
		if err != nil {
			return err
		}
		cond := condition(rec, "TunnelPeersConnected")
		if cond == nil || cond.Status != "False" || !strings.Contains(cond.Message, "tnl-c is Error: at least 3 echo probes") {
			return fmt.Errorf("TunnelPeersConnected is %+v", cond)
		}
		return nil
	})
	t.Logf("a dead remote gateway was reported on the record after %s", took.Round(time.Millisecond))
	_, body, err := scrape(ctx, a, "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(body, `isthmus_tunnel_peer_state{remote_cluster="tnl-c",state="Error"} 1`) {
		t.Errorf("metrics do not show tnl-c in Error:\n%s", grep(body, "peer_state"))
	}
	if err := w.start(c); err != nil {
		t.Fatal(err)
	}
	if err := w.waitMeshUp(ctx, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "tnl-c Connected again", func() error {
		_, body, err := scrape(ctx, a, "/metrics")
		if err != nil {
			return err
		}
		if !strings.Contains(body, `isthmus_tunnel_peer_state{remote_cluster="tnl-c",state="Connected"} 1`) {
			return fmt.Errorf("%s", grep(body, "peer_state"))
		}
		rec, err := w.record(ctx, a.id)
		if err != nil {
			return err
		}
		if p := peerStatus(rec.Status.Tunnel, c.id); p == nil || p.State != brokerv1.TunnelPeerConnected {
			return fmt.Errorf("tnl-c's peer status is %+v", p)
		}
		return nil
	})
}

// TestCleanShutdownRemovesPeersAndRoutes: on SIGTERM the daemon removes
// its peers and routes and its device, exits 0, and the remote side
// reports the loss; a new start reconciles from scratch.
func TestCleanShutdownRemovesPeersAndRoutes(t *testing.T) {
	dumpLogsOnFailure(t)
	b := w.members[1]
	if err := b.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("the daemon did not exit cleanly on SIGTERM: %v", err)
	}
	if !strings.Contains(b.log(), "tunnel stopped; peers and routes removed") {
		t.Error("the daemon did not log its clean shutdown")
	}
	if routes := routesOf(t, b); strings.TrimSpace(routes) != "" {
		t.Errorf("routes of ours left after shutdown:\n%s", routes)
	}
	if out, err := netnstest.Sh("ip", "-n", b.ns, "link", "show", b.dev); err == nil {
		t.Errorf("device left after shutdown:\n%s", out)
	}
	if _, err := os.Stat("/var/run/wireguard/" + b.dev + ".sock"); err == nil {
		t.Error("UAPI socket left after shutdown")
	}
	if err := w.start(b); err != nil {
		t.Fatal(err)
	}
	if err := w.waitMeshUp(context.Background(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
}

// peerStatus is one cluster's entry in a tunnel status.
func peerStatus(ts *brokerv1.TunnelStatus, cluster string) *brokerv1.TunnelPeerStatus {
	if ts == nil {
		return nil
	}
	for i := range ts.Peers {
		if ts.Peers[i].Cluster == cluster {
			return &ts.Peers[i]
		}
	}
	return nil
}
