package dnsserver

import (
	"unsafe"

	"testing"

	corev1 "k8s.io/api/core/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
)

// TestCompactSharesOneSlab: a compiled service's responses live in one
// slab, the variants of a small answer are one copy, and each response is
// capped at its length so that nothing can append into a neighbour.
func TestCompactSharesOneSlab(t *testing.T) {
	cfg, err := (Config{Zone: "clusterset.local."}).withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	s := compileService(&cfg, svcID{"ns", "web"}, importInput(imp("ns", "web", mcsv1beta1.ClusterSetIP, []string{"10.0.0.1"}, port("http", corev1.ProtocolTCP, 80))), nil)
	a := s.apex.a
	if a.sized != nil {
		t.Errorf("a small answer keeps UDP variants %q beside the whole answer", a.sized.small)
	}
	if cap(a.tcp) != len(a.tcp) {
		t.Errorf("a response's capacity %d exceeds its length %d", cap(a.tcp), len(a.tcp))
	}
	srv := s.sub.get([]byte(wireKey("_http._tcp.")))
	if srv == nil || srv.srv == nil {
		t.Fatalf("no _http._tcp SRV node in %v", s.sub)
	}
	// Both answers point into one allocation: the SRV's bytes lie within
	// the span from the first response to the last.
	lo, hi := &a.tcp[0], &srv.srv.tcp[len(srv.srv.tcp)-1]
	if uintptrOf(hi) < uintptrOf(lo) {
		lo, hi = &srv.srv.tcp[0], &a.tcp[len(a.tcp)-1]
	}
	if hi == nil || uintptrOf(hi)-uintptrOf(lo) > 4096 {
		t.Error("the service's responses are not in one slab")
	}
	if s.sub.get([]byte(wireKey("_tcp."))) != ent {
		t.Error("the _tcp empty non-terminal is not the shared node")
	}
	if s.sub.get([]byte(wireKey("_nope._tcp."))) != nil {
		t.Error("an absent name was found")
	}
}

func uintptrOf(b *byte) uintptr { return uintptr(unsafe.Pointer(b)) }
