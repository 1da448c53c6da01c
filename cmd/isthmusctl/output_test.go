package main

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// TestDNSQueryFallsBackToTCP runs a miekg/dns server that truncates
// every UDP answer and answers fully over TCP, as a resolver does for a
// large answer: diagnose's client takes the TCP answer and says so; with
// tcpOnly (a port-forward) it never tries UDP.
func TestDNSQueryFallsBackToTCP(t *testing.T) {
	// One port for both: a port free for UDP may be taken for TCP, so a
	// few tries.
	var pc net.PacketConn
	var l net.Listener
	var err error
	for range 10 {
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if l, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			break
		}
		pc.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	var udpQueries atomic.Int32 // the handler runs on the servers' goroutines
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		r := new(dns.Msg)
		r.SetReply(q)
		if w.LocalAddr().Network() == "udp" {
			udpQueries.Add(1)
			r.Truncated = true
		} else {
			rr, _ := dns.NewRR(q.Question[0].Name + " 5 IN A 10.97.0.10")
			r.Answer = append(r.Answer, rr)
		}
		_ = w.WriteMsg(r)
	})
	udp, tcp := &dns.Server{PacketConn: pc, Handler: handler}, &dns.Server{Listener: l, Handler: handler}
	go func() { _ = udp.ActivateAndServe() }()
	go func() { _ = tcp.ActivateAndServe() }()
	t.Cleanup(func() { _ = udp.Shutdown(); _ = tcp.Shutdown() })

	answers, transport, err := dnsQuery(context.Background(), pc.LocalAddr().String(), "web.shop.svc.clusterset.local", dns.TypeA, false)
	if err != nil || len(answers) != 1 || answers[0] != "10.97.0.10" || !strings.HasPrefix(transport, "TCP after UDP: truncated") {
		t.Errorf("truncated over UDP: %v %q %v, want 10.97.0.10 over TCP after UDP", answers, transport, err)
	}
	before := udpQueries.Load()
	answers, transport, err = dnsQuery(context.Background(), pc.LocalAddr().String(), "web.shop.svc.clusterset.local", dns.TypeA, true)
	if err != nil || len(answers) != 1 || transport != "TCP" || udpQueries.Load() != before {
		t.Errorf("TCP only: %v %q %v, %d UDP queries", answers, transport, err, udpQueries.Load()-before)
	}
	// Nothing listening: both transports fail, and the error says both.
	if _, _, err := dnsQuery(context.Background(), "127.0.0.1:1", "x.y.svc.clusterset.local", dns.TypeA, false); err == nil || !strings.Contains(err.Error(), "over UDP") || !strings.Contains(err.Error(), "over TCP") {
		t.Errorf("no server: %v", err)
	}
}

// TestRedact pins what gather removes and what it keeps.
func TestRedact(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"key -----BEGIN EC PRIVATE KEY-----\nMHcCAQEEI\nabc\n-----END EC PRIVATE KEY----- done", "key [REDACTED PRIVATE KEY] done"},
		{"cut -----BEGIN PRIVATE KEY-----\\nMIGHAgEAMBMG", "cut [REDACTED PRIVATE KEY]"},
		{"client-key-data: LS0tLS1CRUdJTiBFQyBQUklWQVRFIEtFWS0tLS0t", `client-key-data: "[REDACTED]"`},
		{"data LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t end", "data [REDACTED PEM] end"},
		{"got eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl here", "got [REDACTED TOKEN] here"},
		{"Authorization: Bearer abcdefgh12345678", "Authorization: Bearer [REDACTED]"},
		{`{"token":"s3cr3t","region":"eu"}`, `{"token":"[REDACTED]","region":"eu"}`},
		{"--broker-token=s3cr3t --region=eu", `--broker-token="[REDACTED]" --region=eu`},
		{"password: hunter2", `password: "[REDACTED]"`},
		{"isthmus_agent_exports 3\nregion: eu\nsecretName: isthmus-broker", "isthmus_agent_exports 3\nregion: eu\nsecretName: isthmus-broker"},
	} {
		if got := string(redact([]byte(c.in))); got != c.want {
			t.Errorf("redact(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// TestSkew pins version's warnings.
func TestSkew(t *testing.T) {
	for _, c := range []struct {
		client string
		agents []agentVersion
		want   []string
	}{
		{"v1.2.0", []agentVersion{{"a", "v1.2.0"}, {"b", "v1.2.0"}}, nil},
		{"v1.3.0", []agentVersion{{"a", "v1.2.0"}, {"b", "v1.2.0"}}, []string{"cluster a runs agent v1.2.0, this client is v1.3.0", "cluster b runs agent v1.2.0, this client is v1.3.0"}},
		{"v1.2.0", []agentVersion{{"a", "v1.2.0"}, {"b", "v1.1.0"}}, []string{"cluster b runs agent v1.1.0, this client is v1.2.0", "the clusterset runs 2 agent versions: finish the upgrade so every member runs one"}},
		{"v1.2.0", []agentVersion{{"a", ""}}, []string{"cluster a records no agent version (its agent predates version publishing, or has not started)"}},
	} {
		if got := skew(c.client, c.agents); strings.Join(got, "|") != strings.Join(c.want, "|") {
			t.Errorf("skew(%s, %v) = %q, want %q", c.client, c.agents, got, c.want)
		}
	}
}

// TestCompletion asks cobra's completion entry point, as the shell
// scripts do: contexts come from the kubeconfig, each item of --contexts
// completes on its own, -o offers the formats.
func TestCompletion(t *testing.T) {
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	cfg := clientcmdapi.NewConfig()
	for _, name := range []string{"hub", "member1", "member2"} {
		cfg.Clusters[name] = &clientcmdapi.Cluster{Server: "https://127.0.0.1:1"}
		cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name}
	}
	if err := clientcmd.WriteToFile(*cfg, kc); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"status", "--kubeconfig", kc, "--context", ""}, "hub\nmember1\nmember2\n:4\n"},
		{[]string{"status", "--kubeconfig", kc, "--contexts", "member1,m"}, "member1,hub\nmember1,member1\nmember1,member2\n:6\n"},
		{[]string{"diagnose", "-o", ""}, "table\nwide\nyaml\njson\n:4\n"},
		{[]string{"sta"}, "status\t"},
	} {
		var stdout, stderr bytes.Buffer
		if err := run(context.Background(), append([]string{"__complete"}, c.args...), &stdout, &stderr); err != nil {
			t.Fatalf("__complete %v: %v", c.args, err)
		}
		if !strings.HasPrefix(stdout.String(), c.want) {
			t.Errorf("__complete %v:\n%s\nwant it to start with\n%s", c.args, stdout.String(), c.want)
		}
	}
}
