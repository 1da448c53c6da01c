package tunnel

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/isthmus-dev/isthmus/test/netnstest"
)

// eventually polls cond every 100 ms until it returns nil or timeout
// passes, then fails with its last error.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) time.Duration {
	t.Helper()
	start := time.Now()
	var last error
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		last = cond()
		return last == nil, nil
	})
	if err != nil {
		t.Fatalf("%s: not within %s: %v", what, timeout, last)
	}
	return time.Since(start)
}

func dumpLogsOnFailure(t *testing.T) {
	t.Cleanup(func() {
		if t.Failed() {
			for _, mb := range w.members {
				t.Logf("--- %s daemon log (last 6000 bytes) ---\n%s", mb.id, tail(mb.log(), 6000))
			}
		}
	})
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// TestAutoPicksEmbeddedDeviceWithOffload: this kernel has no WireGuard,
// so auto must embed wireguard-go, with TUN offload, and say so in the
// metrics and on the record; `wg show` must read the embedded device.
func TestAutoPicksEmbeddedDeviceWithOffload(t *testing.T) {
	dumpLogsOnFailure(t)
	ctx := context.Background()
	if _, err := netnstest.Sh("ip", "netns", "exec", "tnla", "ip", "link", "add", "tnlprobe", "type", "wireguard"); err == nil {
		_, _ = netnstest.Sh("ip", "netns", "exec", "tnla", "ip", "link", "del", "tnlprobe")
		t.Fatal("this kernel has WireGuard: the test expects a kernel without it, so that auto must choose the embedded device")
	}
	a := w.members[0]
	_, body, err := scrape(ctx, a, "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf(`isthmus_tunnel_info{device="%s",implementation="userspace",offload="true"`, a.dev)
	if !strings.Contains(body, want) {
		t.Errorf("metrics lack %s:\n%s", want, grep(body, "isthmus_tunnel_info"))
	}
	eventually(t, 10*time.Second, "TunnelReady on the record", func() error {
		rec, err := w.record(ctx, a.id)
		if err != nil {
			return err
		}
		c := condition(rec, "TunnelReady")
		if c == nil || c.Status != "True" || c.Reason != "UserspaceDeviceWithOffload" {
			return fmt.Errorf("TunnelReady is %+v", c)
		}
		return nil
	})
	out, err := netnstest.Sh("wg", "show", a.dev)
	if err != nil {
		t.Fatal(err)
	}
	for _, mb := range w.members[1:] {
		rec, err := w.record(ctx, mb.id)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "peer: "+rec.Spec.WireGuard.PublicKey) {
			t.Errorf("wg show %s lacks peer %s (%s):\n%s", a.dev, mb.id, rec.Spec.WireGuard.PublicKey, out)
		}
	}
	for _, want := range []string{"listening port: 51820", "persistent keepalive: every 10 seconds", "allowed ips: 10.202.0.0/16, 10.212.0.0/16"} {
		if !strings.Contains(out, want) {
			t.Errorf("wg show %s lacks %q:\n%s", a.dev, want, out)
		}
	}
}

func grep(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestPodsReachEachOtherOnlyThroughTunnel: pod addresses in three
// namespaces reach each other; the kernel routes them to the WireGuard
// device by our routes, and a capture on the veth sees only WireGuard
// packets, never the payload. A plaintext control packet sent over the
// same veth during the capture shows that the capture would see it.
func TestPodsReachEachOtherOnlyThroughTunnel(t *testing.T) {
	dumpLogsOnFailure(t)
	if err := w.meshErr(); err != nil {
		t.Fatal(err)
	}
	a, b := w.members[0], w.members[1]
	out, err := netnstest.Sh("ip", "-n", a.ns, "route", "get", b.pod, "from", a.pod)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "dev "+a.dev) {
		t.Errorf("route to %s goes %q, not through %s", b.pod, out, a.dev)
	}
	routes := routesOf(t, a)
	for _, cidr := range []string{"10.202.0.0/16", "10.212.0.0/16", "10.203.0.0/16", "10.213.0.0/16"} {
		if !strings.Contains(routes, cidr+" dev "+a.dev) {
			t.Errorf("no route of ours to %s through %s:\n%s", cidr, a.dev, routes)
		}
	}

	marker := fmt.Sprintf("TNL-PLAINTEXT-MARKER-%d", time.Now().UnixNano())
	capture := exec.Command("ip", "netns", "exec", hubNS, "tcpdump", "-i", a.ns+"h", "-nn", "-l", "-A", "-U", "udp")
	var stdout bytes.Buffer
	capture.Stdout = &stdout
	stderr, _ := capture.StderrPipe()
	if err := capture.Start(); err != nil {
		t.Fatal(err)
	}
	listening := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "listening on") {
				close(listening)
			}
		}
	}()
	select {
	case <-listening:
	case <-time.After(5 * time.Second):
		_ = capture.Process.Kill()
		_ = capture.Wait()
		t.Fatal("tcpdump did not start")
	}
	before := wgDevice(t, a).peers
	for i := range 20 {
		if err := reach(a, b, []byte(fmt.Sprintf("%s-%d", marker, i)), time.Second); err != nil {
			t.Errorf("tunnel round trip %d: %v", i, err)
		}
	}
	// The control: the same kind of payload in the clear over the underlay.
	ctl, err := listenUDPIn(b.ns, b.underlay+":0")
	if err != nil {
		t.Fatal(err)
	}
	_, _ = ctl.WriteToUDP([]byte("CONTROL-"+marker), &net.UDPAddr{IP: net.ParseIP(a.underlay), Port: 9})
	ctl.Close()
	time.Sleep(300 * time.Millisecond)
	_ = capture.Process.Signal(syscall.SIGINT)
	_ = capture.Wait()
	got := stdout.String()
	if !strings.Contains(got, "CONTROL-"+marker) {
		t.Fatalf("the capture missed the plaintext control packet, so it proves nothing:\n%s", tail(got, 3000))
	}
	if n := strings.Count(got, ".51820: UDP") + strings.Count(got, ".51820 > "); n < 40 {
		t.Errorf("the capture saw %d WireGuard packets for 20 round trips, want at least 40:\n%s", n, tail(got, 3000))
	}
	if strings.Contains(strings.ReplaceAll(got, "CONTROL-"+marker, ""), marker) {
		t.Errorf("the tunnel payload crossed the veth in the clear:\n%s", tail(got, 3000))
	}
	after := wgDevice(t, a).peers
	bPub := wgDevice(t, b).pub
	if after[bPub].tx-before[bPub].tx < 20*32 || after[bPub].rx-before[bPub].rx < 20*32 {
		t.Errorf("device counters for peer %s moved by tx %d rx %d bytes, want the 20 round trips in them",
			b.id, after[bPub].tx-before[bPub].tx, after[bPub].rx-before[bPub].rx)
	}
}
