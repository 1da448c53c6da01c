package identity

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// echoServer accepts mTLS connections on loopback and answers each line
// with the client's SPIFFE id and the serial the server presented.
func echoServer(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := c.(*tls.Conn)
				if err := tc.Handshake(); err != nil {
					return
				}
				st := tc.ConnectionState()
				r := bufio.NewReader(c)
				for {
					if _, err := r.ReadString('\n'); err != nil {
						return
					}
					fmt.Fprintf(c, "%s\n", st.PeerCertificates[0].URIs[0])
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// roundTrip dials, handshakes and exchanges one line; it returns the
// server's leaf serial and the id the server saw.
func roundTrip(addr string, cfg *tls.Config) (serial, seenAs string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d := tls.Dialer{Config: cfg}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "who\n"); err != nil {
		return "", "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		// In TLS 1.3 a client learns that the server refused its
		// certificate on the first read.
		return "", "", err
	}
	return fmt.Sprintf("%x", c.(*tls.Conn).ConnectionState().PeerCertificates[0].SerialNumber), strings.TrimSpace(line), nil
}

// TestMTLSOverLoopback: alpha's gateway serves, pinning beta's gateway as
// its only client; beta's gateway connects pinning alpha's. The right ids
// pass; a wrong pin on either side, an unpinned client, another cluster's
// workload and a foreign clusterset fail.
func TestMTLSOverLoopback(t *testing.T) {
	cs := newClusterset(t)
	bundle := cs.root.TrustBundle()
	serverLeaf, clientLeaf := issue(t, cs.a, gatewayA), issue(t, cs.b, gatewayB)
	srvCfg, err := ServerConfig(serverLeaf, bundle, gatewayB)
	if err != nil {
		t.Fatal(err)
	}
	addr := echoServer(t, srvCfg)
	anyClient, err := ServerConfig(serverLeaf, bundle)
	if err != nil {
		t.Fatal(err)
	}
	openAddr := echoServer(t, anyClient)

	client := func(leaf x509svid.Source, b *TrustBundle, pins ...string) *tls.Config {
		c, err := ClientConfig(leaf, b, pins...)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	_, seen, err := roundTrip(addr, client(clientLeaf, bundle, gatewayA))
	if err != nil || seen != gatewayB {
		t.Fatalf("beta's gateway to alpha's: seen as %q, %v", seen, err)
	}
	// The client may also pin a set.
	if _, _, err := roundTrip(addr, client(clientLeaf, bundle, gatewayB, gatewayA)); err != nil {
		t.Errorf("client pinning a set that holds the server's id: %v", err)
	}

	foreign := newClusterset(t)
	tests := []struct {
		name string
		addr string
		cfg  *tls.Config
		want string
	}{
		{"client pins another id", addr, client(clientLeaf, bundle, gatewayB), "unexpected ID"},
		{"server pins another client", addr, client(issue(t, cs.b, "spiffe://beta."+domain+"/ns/demo/sa/web"), bundle, gatewayA), "bad certificate"},
		{"foreign clusterset's client", openAddr, client(issue(t, foreign.b, gatewayB), foreign.root.TrustBundle(), gatewayA), "certificate"},
		{"client trusting another root", openAddr, client(clientLeaf, foreign.root.TrustBundle(), gatewayA), "certificate signed by unknown authority"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, seen, err := roundTrip(tt.addr, tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("connected (seen as %q) or failed otherwise: %v; want an error containing %q", seen, err, tt.want)
			}
		})
	}
	if _, err := ClientConfig(clientLeaf, bundle); err == nil {
		t.Error("a client config without a pinned server id was made")
	}
	if _, err := ServerConfig(serverLeaf, bundle, "not an id"); err == nil {
		t.Error("a server config with a malformed id was made")
	}
}

// TestMTLSFollowsRotation: a server built on a Rotator presents the new
// leaf to new connections after a renewal, while a connection made before
// keeps working.
func TestMTLSFollowsRotation(t *testing.T) {
	cs := newClusterset(t)
	bundle := cs.root.TrustBundle()
	r, err := NewRotator(cs.a, gatewayA, RotatorOptions{TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ServerConfig(r, bundle)
	if err != nil {
		t.Fatal(err)
	}
	addr := echoServer(t, srv)
	cli, err := ClientConfig(issue(t, cs.b, gatewayB), bundle, gatewayA)
	if err != nil {
		t.Fatal(err)
	}
	old, err := tls.Dial("tcp", addr, cli)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	first := r.Current().Serial()
	if err := r.Renew(); err != nil {
		t.Fatal(err)
	}
	serial, _, err := roundTrip(addr, cli)
	if err != nil {
		t.Fatal(err)
	}
	if serial != r.Current().Serial() || serial == first {
		t.Errorf("new connection got serial %s, want the renewed %s (first was %s)", serial, r.Current().Serial(), first)
	}
	old.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintln(old, "still there?")
	if _, err := bufio.NewReader(old).ReadString('\n'); err != nil {
		t.Errorf("the connection made before the rotation broke: %v", err)
	}
}
