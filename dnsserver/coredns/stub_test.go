package isthmus

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"

	"github.com/isthmus-dev/isthmus/test/freeport"
)

// chartStub is the server block the member chart renders for the
// cluster's CoreDNS (with dns.clusterIP=10.99.0.53), kept in step with
// the chart by TestChartCoreDNSStub in cmd/isthmus.
const chartStub = "../../charts/isthmus/testdata/coredns-stub.txt"

// TestChartStubDomain runs the real CoreDNS (errors, cache, forward, as a
// cluster's CoreDNS has them) with the chart's stub-domain block, its
// forward pointed at a second server block standing in for the isthmus-dns
// Service (whoami, which answers every name with the asker's address),
// and checks with dig that clusterset.local names travel through it and
// others do not.
func TestChartStubDomain(t *testing.T) {
	if _, err := exec.LookPath("dig"); err != nil {
		t.Fatal("dig not installed (Debian bind9-dnsutils)")
	}
	data, err := os.ReadFile(chartStub)
	if err != nil {
		t.Fatal(err)
	}
	stub := string(data)
	front, back := freeUDPPort(t), freeUDPPort(t)
	for old, repl := range map[string]string{
		"clusterset.local:53 {":   "clusterset.local:" + front + " {\n    bind 127.0.0.1",
		"forward . 10.99.0.53:53": "forward . 127.0.0.1:" + back,
	} {
		if !strings.Contains(stub, old) {
			t.Fatalf("the chart's stub block lacks %q:\n%s", old, stub)
		}
		stub = strings.Replace(stub, old, repl, 1)
	}
	corefile := stub + "\nclusterset.local:" + back + " {\n    bind 127.0.0.1\n    whoami\n}\n"
	caddy.Quiet, dnsserver.Quiet = true, true
	inst, err := caddy.Start(corefileInput(corefile))
	if err != nil {
		t.Fatalf("starting CoreDNS with the chart's stub block: %v\n%s", err, corefile)
	}
	defer inst.Stop()

	dig := func(name string) string {
		out, err := exec.Command("dig", "@127.0.0.1", "-p", front, "+time=2", "+tries=1", name, "A").Output()
		if err != nil {
			t.Fatalf("dig %s: %v", name, err)
		}
		return strings.Join(strings.Fields(string(out)), " ")
	}
	// whoami answers from the back block: the name travelled through forward.
	if out := dig("echo.demo.svc.clusterset.local"); !strings.Contains(out, "status: NOERROR") ||
		!strings.Contains(out, "_udp.echo.demo.svc.clusterset.local.") {
		t.Errorf("clusterset.local through the stub block:\n%s", out)
	}
	if out := dig("example.org"); !strings.Contains(out, "status: REFUSED") {
		t.Errorf("a name outside the stub domain:\n%s", out)
	}
}

// freeUDPPort is a loopback port outside the ephemeral range, free a
// moment ago (see test/freeport: dig may share an ephemeral one).
func freeUDPPort(t *testing.T) string {
	t.Helper()
	return freeport.Port(t)
}
