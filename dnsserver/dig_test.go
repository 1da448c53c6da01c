package dnsserver

import (
	"context"
	"errors"
	"net"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// dig runs the real dig (bind9-dnsutils) against addr.
func dig(t *testing.T, addr string, args ...string) string {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	out, err := exec.Command("dig", append([]string{"@" + host, "-p", port, "+norec", "+time=2", "+tries=1"}, args...)...).Output()
	if err != nil {
		t.Fatalf("dig %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// TestDig checks the wire behaviour with a real, independent client.
func TestDig(t *testing.T) {
	if _, err := exec.LookPath("dig"); err != nil {
		t.Fatal("dig not installed (Debian bind9-dnsutils; make deps installs it)")
	}
	h, _ := newTestHandler(t, Config{})
	addr := startServer(t, h)
	for _, tc := range []struct {
		args []string
		want []string // substrings of dig's output
	}{
		{[]string{"echo.demo.svc.clusterset.local", "A"}, []string{"status: NOERROR", "flags: qr aa;", "echo.demo.svc.clusterset.local. 5 IN A 10.100.0.10"}},
		{[]string{"EcHo.DeMo.svc.clusterset.local", "A"}, []string{"status: NOERROR", ";EcHo.DeMo.svc.clusterset.local. IN A", "EcHo.DeMo.svc.clusterset.local. 5 IN A 10.100.0.10"}},
		{[]string{"dns-version.clusterset.local", "TXT"}, []string{`dns-version.clusterset.local. 28800 IN TXT "1.0.0"`}},
		{[]string{"nope.demo.svc.clusterset.local", "A"}, []string{"status: NXDOMAIN", "clusterset.local. 5 IN SOA ns.dns.clusterset.local. hostmaster.clusterset.local."}},
		{[]string{"echo.demo.svc.clusterset.local", "AAAA"}, []string{"status: NOERROR", "ANSWER: 0", "AUTHORITY: 1", "IN SOA"}},
		{[]string{"_http._tcp.echo.demo.svc.clusterset.local", "SRV"}, []string{"IN SRV 0 10 80 echo.demo.svc.clusterset.local.", "ADDITIONAL: 2", "ADDITIONAL SECTION: echo.demo.svc.clusterset.local. 5 IN A 10.100.0.10"}},
		{[]string{"pod-a0.cluster-a.db.demo.svc.clusterset.local", "AAAA"}, []string{"IN AAAA fd00:246::10"}},
		{[]string{"cluster-a.db.demo.svc.clusterset.local", "A"}, []string{"status: NOERROR", "ANSWER: 0"}},
		{[]string{"echo.demo.svc.cluster.local", "A"}, []string{"status: REFUSED"}},
		{[]string{"+edns=1", "+noednsneg", "echo.demo.svc.clusterset.local", "A"}, []string{"status: BADVERS", "EDNS: version: 0"}},
		{[]string{"+edns=0", "+bufsize=1232", "echo.demo.svc.clusterset.local", "A"}, []string{"EDNS: version: 0, flags:; udp: 1232"}},
		{[]string{"+tcp", "big.other.svc.clusterset.local", "A"}, []string{"ANSWER: 200", "flags: qr aa;"}},
		{[]string{"+notcp", "+ignore", "+noedns", "big.other.svc.clusterset.local", "A"}, []string{"flags: qr aa tc;"}},
		{[]string{"+notcp", "+ignore", "+bufsize=1232", "big.other.svc.clusterset.local", "A"}, []string{"flags: qr aa tc;"}},
		// Without +ignore dig retries over TCP on TC and gets everything.
		{[]string{"+notcp", "big.other.svc.clusterset.local", "A"}, []string{"Truncated, retrying in TCP mode.", "ANSWER: 200"}},
	} {
		out := dig(t, addr, append([]string{"+nocmd", "+nostats"}, tc.args...)...)
		flat := strings.Join(strings.Fields(out), " ")
		for _, w := range tc.want {
			if !strings.Contains(flat, strings.Join(strings.Fields(w), " ")) {
				t.Errorf("dig %v: output lacks %q:\n%s", tc.args, w, out)
			}
		}
	}
}

// TestGoResolver resolves through Go's own resolver pointed at the server.
func TestGoResolver(t *testing.T) {
	h, _ := newTestHandler(t, Config{})
	addr := startServer(t, h)
	r := goResolver(addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ips, err := r.LookupHost(ctx, "db.demo.svc.clusterset.local")
	slices.Sort(ips)
	if err != nil || !slices.Equal(ips, []string{"10.246.0.10", "10.246.1.10", "10.246.1.11", "fd00:246::10"}) {
		t.Errorf("LookupHost db: %v %v", ips, err)
	}
	_, srvs, err := r.LookupSRV(ctx, "tcp-5432", "tcp", "db.demo.svc.clusterset.local")
	if err != nil || len(srvs) != 3 {
		t.Errorf("LookupSRV: %v %v", srvs, err)
	}
	_, err = r.LookupHost(ctx, "nope.demo.svc.clusterset.local")
	var de *net.DNSError
	if !errors.As(err, &de) || !de.IsNotFound {
		t.Errorf("LookupHost nope: %v, want not found", err)
	}
	// 200 endpoints: Go's resolver retries over TCP on TC.
	if ips, err := r.LookupHost(ctx, "big.other.svc.clusterset.local"); err != nil || len(ips) != 200 {
		t.Errorf("LookupHost big: %d addresses, %v", len(ips), err)
	}
}

func goResolver(addr string) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
}
