package identity

import (
	"crypto/tls"
	"net"
	"testing"
	"time"
)

// BenchmarkIssueLeaf is the cost of one gateway leaf: a P-256 key, a
// signature, the PEM encodings.
func BenchmarkIssueLeaf(b *testing.B) {
	cs := newClusterset(b)
	for b.Loop() {
		if _, err := cs.a.IssueLeaf(gatewayA, time.Hour); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLoadCA is the cost of reading an intermediate from its Secret.
func BenchmarkLoadCA(b *testing.B) {
	cs := newClusterset(b)
	c, k, bu := pemOf(b, cs.a)
	for b.Loop() {
		if _, err := LoadCA(c, k, bu); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMTLSHandshake is one full mTLS 1.3 handshake over an in-memory
// pipe with both sides verifying the peer's SVID and pinned id.
func BenchmarkMTLSHandshake(b *testing.B) {
	cs := newClusterset(b)
	bundle := cs.root.TrustBundle()
	srv, err := ServerConfig(issue(b, cs.a, gatewayA), bundle, gatewayB)
	if err != nil {
		b.Fatal(err)
	}
	cli, err := ClientConfig(issue(b, cs.b, gatewayB), bundle, gatewayA)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		c1, c2 := net.Pipe()
		errc := make(chan error, 1)
		go func() { errc <- tls.Server(c2, srv).Handshake() }()
		if err := tls.Client(c1, cli).Handshake(); err != nil {
			b.Fatal(err)
		}
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
		c1.Close()
		c2.Close()
	}
}
