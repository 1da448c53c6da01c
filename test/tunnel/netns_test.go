package tunnel

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"time"

	"github.com/isthmus-dev/isthmus/test/netnstest"
)

func listenUDPIn(ns, addr string) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := netnstest.Run(ns, func() error {
		a, err := net.ResolveUDPAddr("udp", addr)
		if err != nil {
			return err
		}
		c, err = net.ListenUDP("udp", a)
		return err
	})
	return c, err
}

func dialTCPIn(ctx context.Context, ns, addr string) (net.Conn, error) {
	var c net.Conn
	err := netnstest.Run(ns, func() (err error) {
		c, err = (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}

// echo answers every UDP datagram on c with the same bytes: a "pod"
// serving on its pod IP inside its cluster's namespace.
func echo(c *net.UDPConn) {
	buf := make([]byte, 2048)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		_, _ = c.WriteToUDPAddrPort(buf[:n], from)
	}
}

// roundTrip sends payload from c to dst and waits for the same bytes back.
func roundTrip(c *net.UDPConn, dst *net.UDPAddr, payload []byte, timeout time.Duration) error {
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	if _, err := c.WriteToUDP(payload, dst); err != nil {
		return fmt.Errorf("sending to %s: %w", dst, err)
	}
	buf := make([]byte, 2048)
	for {
		n, _, err := c.ReadFromUDP(buf)
		if err != nil {
			return fmt.Errorf("waiting for echo from %s: %w", dst, err)
		}
		if bytes.Equal(buf[:n], payload) {
			return nil
		}
	}
}
