// Package freeport picks loopback ports for test servers outside the
// kernel's ephemeral range. A server on an ephemeral port can meet a
// client that the kernel autobinds to the same port: dig sets
// SO_REUSEPORT on its socket, so as root it may share a test server's
// port, and its connected socket then receives its own query back (seen
// once as "query response not set").
package freeport

import (
	"math/rand/v2"
	"net"
	"strconv"
	"testing"
)

// The ports handed out: below Linux's default ephemeral range
// (32768-60999) and above the well-known and common fixed ports.
const (
	low  = 20000
	high = 32767
)

// Addr returns 127.0.0.1:<port> where the port was free for both TCP and
// UDP a moment ago and lies outside the ephemeral range.
func Addr(t testing.TB) string {
	t.Helper()
	for range 200 {
		port := low + rand.IntN(high-low+1)
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		if free(addr) {
			return addr
		}
	}
	t.Fatalf("no free loopback port in %d-%d", low, high)
	return ""
}

// Port is Addr's port alone.
func Port(t testing.TB) string {
	t.Helper()
	_, port, _ := net.SplitHostPort(Addr(t))
	return port
}

func free(addr string) bool {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	defer l.Close()
	c, err := net.ListenPacket("udp", addr)
	if err != nil {
		return false
	}
	c.Close()
	return true
}
