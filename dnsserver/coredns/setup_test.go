package isthmus

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/coredns/caddy"
)

// block returns a controller positioned on the plugin's lines of a server
// block, as CoreDNS hands them to setup.
func controller(t *testing.T, corefile string) *caddy.Controller {
	t.Helper()
	keys, body := splitBlock(t, corefile)
	c := caddy.NewTestController("dns", body)
	c.ServerBlockKeys = keys
	return c
}

// splitBlock takes "zones { lines }" apart into its keys and the isthmus
// directive's own text.
func splitBlock(t *testing.T, corefile string) ([]string, string) {
	t.Helper()
	head, rest, ok := strings.Cut(corefile, "{")
	if !ok {
		t.Fatalf("no block in %q", corefile)
	}
	rest = rest[:strings.LastIndex(rest, "}")]
	i := strings.Index(rest, "isthmus")
	if i < 0 {
		t.Fatalf("no isthmus directive in %q", corefile)
	}
	d := rest[i:]
	if nl := strings.Index(d, "\n"); nl >= 0 && !strings.Contains(d[:nl], "{") {
		d = d[:nl]
	} else if end := strings.Index(d, "}"); end >= 0 {
		d = d[:end+1]
	}
	return strings.Fields(head), d
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in      string
		ok      bool
		zone    string
		ttl     uint32
		cz      string
		kc, ctx string
	}{
		{"clusterset.local { isthmus }", true, "clusterset.local.", 0, "", "", ""},
		{"example.org { isthmus clusterset.local }", true, "clusterset.local.", 0, "", "", ""},
		{"clusterset.local { isthmus {\nttl 9\ncluster_zone c.local\nkubeconfig /k ctx\nmax_udp_size 4096\n} }", true, "clusterset.local.", 9, "c.local.", "/k", "ctx"},
		{"clusterset.local { isthmus a b }", false, "", 0, "", "", ""},
		{"clusterset.local { isthmus {\nttl 0\n} }", false, "", 0, "", "", ""},
		{"clusterset.local { isthmus {\nttl 4000\n} }", false, "", 0, "", "", ""},
		{"clusterset.local { isthmus {\nttl x\n} }", false, "", 0, "", "", ""},
		{"clusterset.local { isthmus {\nkubeconfig\n} }", false, "", 0, "", "", ""},
		{"clusterset.local { isthmus {\nbogus 1\n} }", false, "", 0, "", "", ""},
	} {
		o, err := parse(controller(t, tc.in))
		if (err == nil) != tc.ok {
			t.Errorf("%q: err %v, want ok=%v", tc.in, err, tc.ok)
			continue
		}
		if tc.ok && (o.cfg.Zone != tc.zone || o.cfg.TTL != tc.ttl || o.cfg.ClusterZone != tc.cz || o.kubeconfig != tc.kc || o.kubeContext != tc.ctx) {
			t.Errorf("%q: %+v", tc.in, o)
		}
	}
}

// TestReadmeExamples parses every Corefile example in README.md.
func TestReadmeExamples(t *testing.T) {
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	examples := regexp.MustCompile("(?s)```corefile\n(.*?)```").FindAllStringSubmatch(string(b), -1)
	if len(examples) < 2 {
		t.Fatalf("found %d examples", len(examples))
	}
	for _, ex := range examples {
		if _, err := parse(controller(t, ex[1])); err != nil {
			t.Errorf("README example does not parse:\n%s\n%v", ex[1], err)
		}
	}
}
