package tunnel

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// prober sends each round's echo probes from one UDP socket and matches
// the echoes by sequence number. A round costs one socket and one
// goroutine however many peers there are; a socket per probe cost a
// socket, a goroutine and a timer per peer every second.
type prober struct {
	conn *net.UDPConn
	seq  uint64
}

func newProber() (*prober, error) {
	c, err := net.ListenUDP("udp", nil)
	if err != nil {
		return nil, fmt.Errorf("opening the probe socket: %w", err)
	}
	return &prober{conn: c}, nil
}

func (p *prober) close() { p.conn.Close() }

// probeResult is one target's outcome in a round.
type probeResult struct {
	RTT time.Duration
	Err error
}

// round sends one probe to every target and waits up to timeout for the
// echoes. Every target gets a result: an RTT, or an error when its echo
// did not come back in time or could not be sent.
func (p *prober) round(targets []netip.AddrPort, timeout time.Duration) []probeResult {
	out := make([]probeResult, len(targets))
	type sent struct {
		idx   int
		start time.Time
	}
	pending := make(map[uint64]sent, len(targets))
	for i, dst := range targets {
		p.seq++
		var msg [probeLen]byte
		copy(msg[:], probeMagic[:])
		binary.BigEndian.PutUint64(msg[4:], p.seq)
		start := time.Now()
		if _, err := p.conn.WriteToUDPAddrPort(msg[:], dst); err != nil {
			out[i].Err = fmt.Errorf("sending probe to %s: %w", dst, err)
			continue
		}
		pending[p.seq] = sent{i, start}
	}
	if err := p.conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		for _, s := range pending {
			out[s.idx].Err = fmt.Errorf("arming the probe deadline: %w", err)
		}
		return out
	}
	var buf [64]byte
	for len(pending) > 0 {
		n, from, err := p.conn.ReadFromUDPAddrPort(buf[:])
		if err != nil {
			// The deadline, or a closed socket: whoever has not answered
			// has failed this round.
			break
		}
		if n != probeLen || [4]byte(buf[:4]) != probeMagic {
			continue
		}
		seq := binary.BigEndian.Uint64(buf[4:probeLen])
		s, ok := pending[seq]
		// An echo of an earlier round (not pending), or from an address
		// other than the one probed, is not this target's answer.
		if !ok || from.Addr().Unmap() != targets[s.idx].Addr().Unmap() {
			continue
		}
		out[s.idx].RTT = time.Since(s.start)
		delete(pending, seq)
	}
	for _, s := range pending {
		out[s.idx].Err = fmt.Errorf("no echo from %s within %s", targets[s.idx], timeout)
	}
	return out
}
