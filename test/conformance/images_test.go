package conformance

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/isthmus-dev/isthmus/dnsserver"
	"github.com/isthmus-dev/isthmus/test/netnstest"
)

const (
	socatRef    = "docker.io/alpine/socat:1.7.4.4"
	netshootRef = "docker.io/nicolaka/netshoot:v0.15"

	// The addresses our resolver gives the test's services; the
	// ClusterSetIPs sit on the namespace's loopback, where the hello
	// listener answers.
	clusterSetIPv4 = "10.96.0.42"
	clusterSetIPv6 = "fd00:96::42"
	hello          = "hello.conf.svc.clusterset.local"
	headless       = "db.conf.svc.clusterset.local"
)

// The hello pod's addresses as the downward API gives status.podIPs.
var podIPv4, podIPv6 = "10.244.0.5", "fd00:244::5"

// The headless service's endpoints, from cluster "east".
var headlessPods = []struct{ host, v4, v6 string }{
	{"web-0", "10.244.1.10", "fd00:244:1::10"},
	{"web-1", "10.244.1.11", "fd00:244:1::11"},
}

// TestSuiteImages unpacks the suite's images from the archive `test/image
// suite-images` writes and runs, with chroot in a network namespace of
// its own, each tool the way the suite's pods do: the hello listener
// script (sh, grep -E, tr, awk, socat) for an IPv4, a dual-stack and an
// IPv6 pod, and from the request image BIND's nslookup against our own
// resolver (A, AAAA, SRV, headless and per-pod names, parsed as the suite
// parses them), nc -v -w 2 -4 by name and the IPv6 pipeline of nslookup,
// grep, tail, awk and nc.
func TestSuiteImages(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the suite image test needs root (chroot, network namespaces), as CI has")
	}
	imgs, err := unpackArchive(suiteArchive(t), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	socat, netshoot := imgs[socatRef], imgs[netshootRef]
	if socat == nil || netshoot == nil {
		t.Fatalf("archive holds %v; want %s and %s", slices.Collect(maps.Keys(imgs)), socatRef, netshootRef)
	}
	// Upstream's entrypoints: the suite's hello containers override
	// socat's with /bin/sh; the request pod passes only args to a shell.
	if got := socat.Config.Config.Entrypoint; !slices.Equal(got, []string{"socat"}) {
		t.Errorf("alpine/socat entrypoint %v, want [socat]", got)
	}
	if got := netshoot.Config.Config; len(got.Entrypoint) != 0 || !slices.Equal(got.Cmd, []string{"sh"}) {
		t.Errorf("netshoot entrypoint %v cmd %v, want none and [sh]", got.Entrypoint, got.Cmd)
	}

	ns := newNetns(t)
	startResolver(t, ns)
	// What the kubelet mounts: the cluster's resolver, its search path.
	if err := os.WriteFile(filepath.Join(netshoot.Root, "etc/resolv.conf"),
		[]byte("nameserver 127.0.0.1\nsearch conf.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	request := func(script string) (string, error) { return ns.run(netshoot, script) }

	t.Run("request pod loop", func(t *testing.T) {
		out, err := request(`i=0; while [ $i -lt 2 ]; do echo '.'; sleep 0.1; i=$((i+1)); done`)
		if err != nil || out != ".\n.\n" {
			t.Errorf("loop printed %q (%v)", out, err)
		}
	})
	t.Run("nslookup", func(t *testing.T) { testNslookup(t, request) })

	for _, pod := range []struct {
		name   string
		ips    string // status.podIPs through the downward API
		answer string // the first of them, which the listener echoes
		nc4    bool   // reachable by nc -4 <name>
		nc6    bool   // reachable by the IPv6 pipeline
	}{
		{"IPv4 pod", podIPv4, podIPv4, true, false},
		{"dual-stack pod", podIPv4 + "," + podIPv6, podIPv4, true, true},
		{"IPv6 pod", podIPv6, podIPv6, false, true},
	} {
		t.Run(pod.name, func(t *testing.T) {
			stop := ns.start(t, socat, listenerScript("TCP"), "MY_POD_IPS="+pod.ips)
			defer stop()
			stopUDP := ns.start(t, socat, listenerScript("UDP"), "MY_POD_IPS="+pod.ips)
			defer stopUDP()
			want := "pod ip " + pod.answer
			if pod.nc4 {
				// nc -v reports the connection on stderr, which the suite
				// folds into what it reads.
				out := awaitOutput(t, request, "echo hi | nc -v -w 2 -4 "+hello+" 42 2>&1", want)
				if !strings.Contains(out, "succeeded!") {
					t.Errorf("nc -v printed no connection report:\n%s", out)
				}
				awaitOutput(t, request, "echo hi | nc -u -w 1 -4 "+hello+" 42 2>&1", want)
			}
			if pod.nc6 {
				out := awaitOutput(t, request, ipv6Pipeline(hello+".", 42), want)
				if !strings.Contains(out, "fd00:96::42") {
					t.Errorf("the IPv6 pipeline did not dial the AAAA address:\n%s", out)
				}
			}
		})
	}

	t.Run("not exported", func(t *testing.T) {
		stop := ns.start(t, socat, listenerScript("TCP"), "MY_POD_IPS="+podIPv4)
		defer stop()
		awaitOutput(t, request, "echo hi | nc -v -w 2 -4 "+clusterSetIPv4+" 42 2>&1", "pod ip")
		out, _ := request("echo hi | nc -v -w 2 -4 absent.conf.svc.clusterset.local 42 2>&1")
		if strings.Contains(out, "pod ip") || !strings.Contains(out, "nc:") {
			t.Errorf("a name nobody exports: %q, want nc's error and no answer", out)
		}
	})
}

// testNslookup checks BIND's nslookup output for each query the suite
// makes, read the way the suite reads it: "Name:" lines each followed by
// an "Address:" line, and "service = priority weight port target" lines.
func testNslookup(t *testing.T, request func(string) (string, error)) {
	v4, v6 := []string{}, []string{}
	for _, p := range headlessPods {
		v4, v6 = append(v4, p.v4), append(v6, p.v6)
	}
	for _, tc := range []struct {
		typ, name string
		want      []string
	}{
		{"A", hello, []string{clusterSetIPv4}},
		{"AAAA", hello, []string{clusterSetIPv6}},
		{"A", headless, v4},
		{"AAAA", headless, v6},
		{"A", "web-0.east." + headless, []string{"10.244.1.10"}},
		{"AAAA", "web-1.east." + headless, []string{"fd00:244:1::11"}},
	} {
		out, err := request(fmt.Sprintf("nslookup -type=%s %s.", tc.typ, tc.name))
		if got := nameAddresses(out); err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("nslookup -type=%s %s: addresses %v (%v), want %v:\n%s", tc.typ, tc.name, got, err, tc.want, out)
		}
	}
	for _, tc := range []struct {
		name string
		want []string // port target
	}{
		// One record per distinct port and target: TCP and UDP share 42.
		{hello, []string{"42 " + hello}},
		{headless, []string{"42 web-0.east." + headless, "42 web-1.east." + headless}},
	} {
		out, err := request(fmt.Sprintf("nslookup -type=SRV %s.", tc.name))
		if got := srvRecords(out); err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("nslookup -type=SRV %s: %v (%v), want %v:\n%s", tc.name, got, err, tc.want, out)
		}
	}
	// The suite's IPv6 connection first finds the address with a pipeline.
	out, err := request(ipv6Pipeline(hello+".", 0) + "; echo \"$addr\"")
	if lines := strings.Fields(out); err != nil || len(lines) == 0 || lines[len(lines)-1] != clusterSetIPv6 {
		t.Errorf("the IPv6 address pipeline found %q (%v), want %s", out, err, clusterSetIPv6)
	}
}

var (
	nameAddress = regexp.MustCompile(`(?m)^Name:\s*(\S+)\s*\nAddress:\s*(\S+)`)
	srvLine     = regexp.MustCompile(`(?m)service = \d+ \d+ (\d+) (\S+)$`)
)

// nameAddresses are the answer's addresses, sorted; the server's own
// "Address: 127.0.0.1#53" line has no Name: before it.
func nameAddresses(out string) []string {
	var got []string
	for _, m := range nameAddress.FindAllStringSubmatch(out, -1) {
		got = append(got, m[2])
	}
	slices.Sort(got)
	return got
}

// srvRecords are the SRV answers as "port target", sorted.
func srvRecords(out string) []string {
	var got []string
	for _, m := range srvLine.FindAllStringSubmatch(out, -1) {
		got = append(got, m[1]+" "+strings.TrimSuffix(m[2], "."))
	}
	slices.Sort(got)
	return got
}

// listenerScript is what the suite's hello containers run, in our words:
// tell the families apart in the pod's IPs with grep -E, take the first
// with tr and awk, and answer every connection on port 42 with it through
// socat's SYSTEM (a /bin/sh -c that must see the exported variable).
func listenerScript(proto string) string {
	return `v4=false; v6=false
echo "$MY_POD_IPS" | grep -qE '(^|[^0-9])[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}([^0-9]|$)' && v4=true
echo "$MY_POD_IPS" | grep -qE '[0-9a-fA-F]*:[0-9a-fA-F]*:[0-9a-fA-F:]*' && v6=true
first=$(echo "$MY_POD_IPS" | tr ',' ' ' | awk '{print $1}')
export first
echo "v4=$v4 v6=$v6 first=$first" >&2
if $v4 && $v6; then
	socat -v -v ` + proto + `6-LISTEN:42,crlf,reuseaddr,fork,ipv6only=0 SYSTEM:'echo "pod ip $first"'
elif $v6; then
	socat -v -v ` + proto + `6-LISTEN:42,crlf,reuseaddr,fork SYSTEM:'echo "pod ip $first"'
else
	socat -v -v ` + proto + `-LISTEN:42,crlf,reuseaddr,fork SYSTEM:'echo "pod ip $first"'
fi`
}

// ipv6Pipeline is the suite's way to an IPv6 service: the last address
// nslookup gives that is not the server's (server lines carry #port),
// then nc to it. Port 0 stops after finding the address.
func ipv6Pipeline(fqdn string, port int) string {
	find := fmt.Sprintf("addr=$(nslookup -type=AAAA %s 2>&1 | grep '^Address:' | grep -v '#' | tail -1 | awk '{print $2}')", fqdn)
	if port == 0 {
		return find
	}
	return find + fmt.Sprintf("; if [ -z \"$addr\" ]; then echo 'no IPv6 address'; exit 1; fi; echo hi | nc -v -w 2 $addr %d 2>&1", port)
}

// awaitOutput runs script until its output holds want (a listener takes a
// moment to bind) and returns that output.
func awaitOutput(t *testing.T, request func(string) (string, error), script, want string) string {
	t.Helper()
	var out string
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, _ = request(script)
		if strings.Contains(out, want) {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: output lacks %q after 30 s:\n%s", script, want, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// suiteArchive is the archive to test: ISTHMUS_SUITE_IMAGES when make
// conformance has built it, else one built now by test/image.
func suiteArchive(t *testing.T) string {
	if a := os.Getenv("ISTHMUS_SUITE_IMAGES"); a != "" {
		return a
	}
	out := filepath.Join(t.TempDir(), "suite-images.tar")
	cmd := exec.Command("go", "run", ".", "suite-images", "-out", out)
	cmd.Dir = filepath.Join("..", "image")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the suite images: %v\n%s", err, b)
	}
	return out
}

// netns is a network namespace of the test's own, with the ClusterSetIPs
// on its loopback.
type netns struct{ name string }

func newNetns(t *testing.T) netns {
	t.Helper()
	n := netns{fmt.Sprintf("isthmus-suiteimg-%d", os.Getpid())}
	if _, err := netnstest.Sh("ip", "netns", "add", n.name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = netnstest.Sh("ip", "netns", "del", n.name) })
	for _, c := range [][]string{
		{"link", "set", "lo", "up"},
		{"addr", "add", clusterSetIPv4 + "/32", "dev", "lo"},
		{"-6", "addr", "add", clusterSetIPv6 + "/128", "dev", "lo", "nodad"},
	} {
		if _, err := netnstest.Sh(append([]string{"ip", "-n", n.name}, c...)...); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

// command is sh -c script in img's root, inside the namespace, with the
// image's environment and env.
func (n netns) command(ctx context.Context, img *unpacked, script string, env ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", n.name, "chroot", img.Root, "/bin/sh", "-c", script)
	cmd.Env = append(slices.Clone(img.Config.Config.Env), env...)
	return cmd
}

// run runs script and returns its standard output (standard error too
// when the script folds it in, as the suite's do).
func (n netns) run(img *unpacked, script string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := n.command(ctx, img, script)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		err = fmt.Errorf("%w: %s", err, stderr.String())
	}
	return string(out), err
}

// start runs script in the background, in a process group of its own;
// the returned function (also run at cleanup) kills the group.
func (n netns) start(t *testing.T, img *unpacked, script string, env ...string) func() {
	t.Helper()
	cmd := n.command(context.Background(), img, script, env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Waited for at once, so that a listener ending on its own (killed
	// from outside, or its socat failing) is told apart from the stop.
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			var early error
			select {
			case err := <-exited:
				early = fmt.Errorf("the listener ended before it was stopped: %v", err)
			default:
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				<-exited
			}
			if early != nil {
				t.Error(early)
			}
			if t.Failed() {
				t.Logf("listener output:\n%s", log.String())
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// startResolver serves our resolver on the namespace's 127.0.0.1:53 with
// a ClusterSetIP import (both families) and a headless one from cluster
// east, as the agent writes them.
func startResolver(t *testing.T, n netns) {
	t.Helper()
	b, err := dnsserver.NewBuilder(dnsserver.Config{}, []netip.Addr{netip.MustParseAddr("127.0.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	ports := []mcsv1beta1.ServicePort{{Name: "tcp", Protocol: corev1.ProtocolTCP, Port: 42}, {Name: "udp", Protocol: corev1.ProtocolUDP, Port: 42}}
	b.SetImport(&mcsv1beta1.ServiceImport{ObjectMeta: metav1.ObjectMeta{Namespace: "conf", Name: "hello"},
		Spec: mcsv1beta1.ServiceImportSpec{Type: mcsv1beta1.ClusterSetIP, IPs: []string{clusterSetIPv4, clusterSetIPv6},
			IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}, Ports: ports}})
	b.SetImport(&mcsv1beta1.ServiceImport{ObjectMeta: metav1.ObjectMeta{Namespace: "conf", Name: "db"},
		Spec: mcsv1beta1.ServiceImportSpec{Type: mcsv1beta1.Headless, Ports: ports}})
	for _, at := range []discoveryv1.AddressType{discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6} {
		s := &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Namespace: "conf", Name: "db-east-" + strings.ToLower(string(at)), Labels: map[string]string{
				mcsv1beta1.LabelServiceName: "db", mcsv1beta1.LabelSourceCluster: "east"}},
			AddressType: at,
			Ports: []discoveryv1.EndpointPort{{Name: new("tcp"), Protocol: new(corev1.ProtocolTCP), Port: new(int32(42))},
				{Name: new("udp"), Protocol: new(corev1.ProtocolUDP), Port: new(int32(42))}},
		}
		for _, p := range headlessPods {
			addr := p.v4
			if at == discoveryv1.AddressTypeIPv6 {
				addr = p.v6
			}
			s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{addr}, Hostname: new(p.host),
				Conditions: discoveryv1.EndpointConditions{Ready: new(true)}})
		}
		b.SetSlice(s)
	}
	h, err := dnsserver.NewHandler(b.Config(), nil)
	if err != nil {
		t.Fatal(err)
	}
	h.Store(b.Build())
	ctx, cancel := context.WithCancel(context.Background())
	var l *dnsserver.Listener
	if err := netnstest.Run(n.name, func() (err error) { l, err = dnsserver.Listen(ctx, "127.0.0.1:53", 1); return err }); err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- l.Serve(ctx, h, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("resolver: %v", err)
		}
	})
}
