package tunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// WireGuard's own timing (device/constants.go): a session older than
// RejectAfterTime cannot carry traffic, and a handshake is retried every
// RekeyTimeout.
const (
	rejectAfterTime = 180 * time.Second
	// firstHandshakeGrace is how long a new peer may go without a
	// handshake before it is an error: six RekeyTimeouts.
	firstHandshakeGrace = 30 * time.Second
	// probeFailures consecutive lost echoes make a peer an error.
	probeFailures = 3
)

// probeMagic starts every echo probe, so the echo server answers nothing
// else.
var probeMagic = [4]byte{'i', 's', 't', 'p'}

const probeLen = 16

// echoServer answers probes on addr: the unprivileged UDP echo remote
// gateways use to check the tunnel end to end.
func echoServer(ctx context.Context, addr netip.AddrPort, log *slog.Logger) (func(), error) {
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return nil, fmt.Errorf("listening for tunnel probes on %s: %w", addr, err)
	}
	go func() {
		buf := make([]byte, 64)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				if !errors.Is(err, net.ErrClosed) && ctx.Err() == nil {
					log.Warn("tunnel probe echo stopped", "err", err)
				}
				return
			}
			if n != probeLen || [4]byte(buf[:4]) != probeMagic {
				continue
			}
			_, _ = c.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	return func() { c.Close() }, nil
}

// peerHealth is what the prober and the device say about one peer.
type peerHealth struct {
	configuredAt time.Time
	failures     int // consecutive lost probes
	everOK       bool
	rtt          time.Duration
}

// healthTable holds the health of configured peers by cluster.
type healthTable struct {
	mu    sync.Mutex
	peers map[string]*peerHealth
}

func (h *healthTable) sync(peers []Peer, now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	keep := map[string]bool{}
	for _, p := range peers {
		keep[p.Cluster] = true
		if h.peers[p.Cluster] == nil {
			h.peers[p.Cluster] = &peerHealth{configuredAt: now}
		}
	}
	for c := range h.peers {
		if !keep[c] {
			delete(h.peers, c)
		}
	}
}

func (h *healthTable) record(cluster string, rtt time.Duration, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	ph := h.peers[cluster]
	if ph == nil {
		return
	}
	if err != nil {
		ph.failures++
		return
	}
	ph.failures, ph.everOK, ph.rtt = 0, true, rtt
}

// update adds or drops one cluster's entry as its peer is configured or
// removed, leaving every other entry alone.
func (h *healthTable) update(cluster string, configured bool, now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case !configured:
		delete(h.peers, cluster)
	case h.peers[cluster] == nil:
		h.peers[cluster] = &peerHealth{configuredAt: now}
	}
}

// state judges one configured peer from its device entry and its probes,
// and returns the last probe RTT.
func (h *healthTable) state(cluster string, dp *wgtypes.Peer, now time.Time) (verdict, time.Duration) {
	h.mu.Lock()
	ph := h.peers[cluster]
	var snapshot peerHealth
	if ph != nil {
		snapshot = *ph
	}
	h.mu.Unlock()
	return judge(snapshot, dp, now), snapshot.rtt
}

// verdict is a peer's state with a CamelCase reason for tools and a
// message for people.
type verdict struct {
	state, reason, message string
}

// judge is Submariner's connection status with WireGuard's constants and
// an active probe: no handshake yet is Connecting for a grace period, then
// an Error; a handshake older than RejectAfterTime means no session can
// exist; lost probes mean the tunnel does not carry traffic whatever the
// handshake says.
func judge(ph peerHealth, dp *wgtypes.Peer, now time.Time) verdict {
	if dp == nil {
		return verdict{StateError, "NotOnDevice", "peer missing from the device"}
	}
	// Messages carry no numbers that change from one check to the next,
	// so an unchanged state does not rewrite the record; the metrics carry
	// handshake ages and RTTs.
	if dp.LastHandshakeTime.IsZero() {
		if now.Sub(ph.configuredAt) > firstHandshakeGrace {
			return verdict{StateError, "NoHandshake", fmt.Sprintf("no handshake within %s of configuring the peer; is %s reachable over UDP?", firstHandshakeGrace, dp.Endpoint)}
		}
		return verdict{StateConnecting, "AwaitingHandshake", "waiting for the first handshake"}
	}
	if now.Sub(dp.LastHandshakeTime) > rejectAfterTime {
		return verdict{StateError, "HandshakeExpired", fmt.Sprintf("no handshake for over %s, so no session can exist", rejectAfterTime)}
	}
	if ph.failures >= probeFailures {
		return verdict{StateError, "ProbesLost", fmt.Sprintf("at least %d echo probes in a row over the tunnel got no reply", probeFailures)}
	}
	if !ph.everOK {
		return verdict{StateConnecting, "AwaitingProbe", "handshake done, waiting for the first echo over the tunnel"}
	}
	return verdict{StateConnected, "Healthy", "handshake done and echo probes answered"}
}
