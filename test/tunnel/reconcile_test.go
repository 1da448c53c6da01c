package tunnel

import (
	"context"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/test/netnstest"
)

var clustersGVR = brokerv1.ClustersResource

// writeRemote writes a whole record for a cluster that runs no gateway,
// as a misconfigured or hostile member would.
func writeRemote(t *testing.T, id, pub, endpoint string, pods []string) {
	t.Helper()
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": brokerv1.SchemeGroupVersion.String(),
		"kind":       "Cluster",
		"metadata":   map[string]any{"name": id, "namespace": brokerNS, "labels": map[string]any{brokerv1.LabelSourceCluster: id}},
		"spec": map[string]any{"clusterID": id, "podCIDRs": toAny(pods),
			"wireGuard": map[string]any{"publicKey": pub, "endpoint": endpoint}},
	}}
	_, err := w.broker.Resource(clustersGVR).Namespace(brokerNS).Apply(context.Background(), id, obj, metav1.ApplyOptions{FieldManager: agentFields, Force: true})
	if err != nil {
		t.Fatalf("writing record %s: %v", id, err)
	}
	t.Cleanup(func() {
		_ = w.broker.Resource(clustersGVR).Namespace(brokerNS).Delete(context.Background(), id, metav1.DeleteOptions{})
	})
}

func newPub(t *testing.T) string {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey().String()
}

// conflictOf reads a member's TunnelConflict condition from its record.
func conflictOf(mb *member) (*metav1.Condition, error) {
	rec, err := w.record(context.Background(), mb.id)
	if err != nil {
		return nil, err
	}
	c := condition(rec, "TunnelConflict")
	if c == nil {
		return nil, fmt.Errorf("%s has no TunnelConflict condition", mb.id)
	}
	return c, nil
}

func routesOf(t *testing.T, mb *member) string {
	t.Helper()
	out, err := netnstest.Sh("ip", "-n", mb.ns, "route", "show", "table", "all", "proto", fmt.Sprint(routeProto))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestConflictsGetStateAndNoRoute: a newer record overlapping an older
// one's CIDRs, one overlapping this cluster's own, and one reusing an
// older cluster's key each get a state that names the cause, on the
// record and in the metrics, and neither a peer nor a route; the older
// cluster keeps working.
func TestConflictsGetStateAndNoRoute(t *testing.T) {
	dumpLogsOnFailure(t)
	a, b := w.members[0], w.members[1]
	bRec, err := w.record(context.Background(), b.id)
	if err != nil {
		t.Fatal(err)
	}
	dPub, fPub := newPub(t), newPub(t)
	writeRemote(t, "tnl-d", dPub, "192.0.2.99:51820", []string{"10.202.128.0/17"}) // inside tnl-b's
	writeRemote(t, "tnl-e", bRec.Spec.WireGuard.PublicKey, "192.0.2.98:51820", []string{"10.205.0.0/16"})
	writeRemote(t, "tnl-f", fPub, "192.0.2.97:51820", []string{"10.201.5.0/24"}) // inside tnl-a's own
	eventually(t, 15*time.Second, "conflicts on tnl-a's record", func() error {
		c, err := conflictOf(a)
		if err != nil {
			return err
		}
		for _, want := range []string{
			"tnl-d (CIDRConflict): 10.202.128.0/17 overlaps cluster tnl-b's 10.202.0.0/16 (older record wins)",
			"tnl-e (KeyConflict): its WireGuard public key is already used by cluster tnl-b",
			"tnl-f (CIDRConflict): 10.201.5.0/24 overlaps this cluster's own 10.201.0.0/16",
		} {
			if c.Status != "True" || !strings.Contains(c.Message, want) {
				return fmt.Errorf("TunnelConflict %s %s: %q lacks %q", c.Status, c.Reason, c.Message, want)
			}
		}
		return nil
	})
	_, body, err := scrape(context.Background(), a, "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`isthmus_tunnel_conflicts{kind="cidr",remote_cluster="tnl-d"} 1`,
		`isthmus_tunnel_conflicts{kind="key",remote_cluster="tnl-e"} 1`,
		`isthmus_tunnel_peer_state{remote_cluster="tnl-d",state="CIDRConflict"} 1`,
		`isthmus_tunnel_peer_state{remote_cluster="tnl-e",state="KeyConflict"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s:\n%s", want, grep(body, "isthmus_tunnel_"))
		}
	}
	routes := routesOf(t, a)
	for _, cidr := range []string{"10.202.128.0/17", "10.205.0.0/16", "10.201.5.0/24"} {
		if strings.Contains(routes, cidr) {
			t.Errorf("a route to conflicting %s exists:\n%s", cidr, routes)
		}
	}
	if !strings.Contains(routes, "10.202.0.0/16 dev "+a.dev) {
		t.Errorf("the older cluster's route is gone:\n%s", routes)
	}
	peers := wgDevice(t, a).peers
	for _, k := range []string{dPub, fPub} {
		if _, ok := peers[k]; ok {
			t.Errorf("conflicting key %s became a peer", k)
		}
	}
	if p := peers[bRec.Spec.WireGuard.PublicKey]; p.allowed != 2 {
		t.Errorf("tnl-b's peer has %d allowed IPs, want its own 2 (tnl-e's CIDR must not be added to it)", p.allowed)
	}
	if err := reach(a, b, []byte("still-there"), time.Second); err != nil {
		t.Errorf("tnl-a no longer reaches tnl-b: %v", err)
	}

	for _, id := range []string{"tnl-d", "tnl-e", "tnl-f"} {
		if err := w.broker.Resource(clustersGVR).Namespace(brokerNS).Delete(context.Background(), id, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 15*time.Second, "conflicts cleared", func() error {
		c, err := conflictOf(a)
		if err != nil {
			return err
		}
		if c.Status != "False" {
			return fmt.Errorf("TunnelConflict still %s: %s", c.Status, c.Message)
		}
		return nil
	})
}

// TestHandEditsRepairedWithinOneResync: a route and a peer deleted by
// hand come back within one resync period.
func TestHandEditsRepairedWithinOneResync(t *testing.T) {
	dumpLogsOnFailure(t)
	a, b := w.members[0], w.members[1]
	bPub := wgDevice(t, b).pub
	if _, err := netnstest.Sh("ip", "-n", a.ns, "route", "del", "10.202.0.0/16", "dev", a.dev, "table", routeTable); err != nil {
		t.Fatal(err)
	}
	took := eventually(t, resync+time.Second, "the deleted route back", func() error {
		if !strings.Contains(routesOf(t, a), "10.202.0.0/16 dev "+a.dev) {
			return fmt.Errorf("no route to 10.202.0.0/16")
		}
		return nil
	})
	t.Logf("route restored after %s (resync %s)", took.Round(time.Millisecond), resync)

	if _, err := netnstest.Sh("wg", "set", a.dev, "peer", bPub, "remove"); err != nil {
		t.Fatal(err)
	}
	took = eventually(t, resync+time.Second, "the deleted peer back", func() error {
		if _, ok := wgDevice(t, a).peers[bPub]; !ok {
			return fmt.Errorf("peer %s missing", bPub)
		}
		return nil
	})
	t.Logf("peer restored after %s (resync %s)", took.Round(time.Millisecond), resync)
	eventually(t, 5*time.Second, "tnl-a reaching tnl-b again", func() error { return reach(a, b, []byte("back"), 500*time.Millisecond) })
}

// TestChangingOnePeerKeepsOthersSessions: a change to tnl-c's record
// updates tnl-c's peer alone; tnl-b's session (handshake time, counters)
// on the same device is untouched, as it would not be if all peers were
// replaced.
func TestChangingOnePeerKeepsOthersSessions(t *testing.T) {
	dumpLogsOnFailure(t)
	a, b, c := w.members[0], w.members[1], w.members[2]
	bPub, cPub := wgDevice(t, b).pub, wgDevice(t, c).pub
	if err := reach(a, b, []byte("warm"), time.Second); err != nil {
		t.Fatal(err)
	}
	before := wgDevice(t, a).peers[bPub]
	if before.handshake.IsZero() {
		t.Fatal("tnl-b's peer has no handshake yet")
	}
	t.Cleanup(func() { _ = w.applyAgentFields(context.Background(), c.id, []string{c.podCIDR}, []string{c.svcCIDR}) })
	// The change must be applied by a change pass that touches tnl-c's
	// peer and its one new route and reads neither the device nor the
	// routing table. A resync's full pass may fall into the window (every
	// 2 s here), so the measurement is repeated until one is clean,
	// toggling the CIDR each time.
	var ops map[string]float64
	var added bool
	for attempt := 0; ; attempt++ {
		svcs, allowed, present := []string{c.svcCIDR, "10.223.0.0/16"}, 3, true
		if attempt%2 == 1 {
			svcs, allowed, present = []string{c.svcCIDR}, 2, false
		}
		before := metricsOf(t, a)
		if err := w.applyAgentFields(context.Background(), c.id, []string{c.podCIDR}, svcs); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "tnl-c's peer updated", func() error {
			if n := wgDevice(t, a).peers[cPub].allowed; n != allowed {
				return fmt.Errorf("tnl-c's peer has %d allowed IPs, want %d", n, allowed)
			}
			if strings.Contains(routesOf(t, a), "10.223.0.0/16 dev "+a.dev) != present {
				return fmt.Errorf("the route to 10.223.0.0/16 is not there yet, or not gone yet")
			}
			return nil
		})
		time.Sleep(200 * time.Millisecond)
		after := metricsOf(t, a)
		ops = delta(before, after, "isthmus_tunnel_reconcile_operations_total")
		fulls := delta(before, after, "isthmus_tunnel_reconcile_duration_seconds_count")[`kind="full"`]
		added = present
		if fulls == 0 {
			t.Logf("attempt %d: one changed record cost %v", attempt, ops)
			break
		}
		if attempt == 6 {
			t.Fatalf("every attempt overlapped a full pass; last operations %v", ops)
		}
	}
	want := map[string]float64{`op="update_peer"`: 1, `op="replace_route"`: 1}
	if !added {
		want = map[string]float64{`op="update_peer"`: 1, `op="delete_route"`: 1}
	}
	if !maps.Equal(ops, want) {
		t.Errorf("one changed record made operations %v; want exactly %v (no device read, no route listing, no other peer)", ops, want)
	}
	if err := w.applyAgentFields(context.Background(), c.id, []string{c.podCIDR}, []string{c.svcCIDR, "10.223.0.0/16"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "tnl-c's peer updated", func() error {
		if n := wgDevice(t, a).peers[cPub].allowed; n != 3 {
			return fmt.Errorf("tnl-c's peer has %d allowed IPs, want 3", n)
		}
		if !strings.Contains(routesOf(t, a), "10.223.0.0/16 dev "+a.dev) {
			return fmt.Errorf("no route to tnl-c's new CIDR")
		}
		return nil
	})
	after := wgDevice(t, a).peers[bPub]
	if !after.handshake.Equal(before.handshake) {
		t.Errorf("tnl-b's handshake changed from %s to %s: its session was reset", before.handshake, after.handshake)
	}
	if after.rx < before.rx || after.tx < before.tx {
		t.Errorf("tnl-b's counters went back (rx %d->%d, tx %d->%d): the peer was recreated", before.rx, after.rx, before.tx, after.tx)
	}
	if err := reach(a, b, []byte("same-session"), time.Second); err != nil {
		t.Error(err)
	}
	if err := reach(a, c, []byte("updated-peer"), time.Second); err != nil {
		t.Error(err)
	}
}

// metricsOf scrapes a member's metrics into name{labels} -> value.
func metricsOf(t *testing.T, mb *member) map[string]float64 {
	t.Helper()
	_, body, err := scrape(context.Background(), mb, "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, "#") {
			continue
		}
		name, v, ok := strings.Cut(l, " ")
		if !ok {
			continue
		}
		f, err := strconv.ParseFloat(v, 64)
		if err == nil {
			out[name] = f
		}
	}
	return out
}

// delta is how much each series of metric grew, by its labels, leaving
// out those that did not.
func delta(before, after map[string]float64, metric string) map[string]float64 {
	out := map[string]float64{}
	for series, v := range after {
		labels, ok := strings.CutPrefix(series, metric+"{")
		if !ok {
			continue
		}
		if d := v - before[series]; d != 0 {
			out[strings.TrimSuffix(labels, "}")] = d
		}
	}
	return out
}

// TestHijackedRangesGetNoRoute is the route hijack against the real
// tunnel: records written past the broker's admission (as on a broker
// installed by an older version) claiming a default route, half the IPv4
// space, or this node's own underlay network get state Refused, a
// conflict metric and neither a peer nor a route; the mesh keeps working.
func TestHijackedRangesGetNoRoute(t *testing.T) {
	dumpLogsOnFailure(t)
	a, b := w.members[0], w.members[1]
	gPub, hPub, iPub := newPub(t), newPub(t), newPub(t)
	writeRemote(t, "tnl-g", gPub, "198.51.100.7:51820", []string{"10.207.0.0/16", "0.0.0.0/0"})
	writeRemote(t, "tnl-h", hPub, "198.51.100.8:51820", []string{"128.0.0.0/1"})
	writeRemote(t, "tnl-i", iPub, "198.51.100.9:51820", []string{"192.0.2.0/25"}) // the underlay
	eventually(t, 15*time.Second, "refusals on tnl-a's record", func() error {
		c, err := conflictOf(a)
		if err != nil {
			return err
		}
		for _, want := range []string{
			"tnl-g (Refused): no peer and no route: 0.0.0.0/0 refused (DefaultRoute)",
			"tnl-h (Refused): no peer and no route: 128.0.0.0/1 refused (PrefixTooWide)",
			"tnl-i (Refused): no peer and no route: 192.0.2.0/25 refused (CoversProtected)",
		} {
			if c.Status != "True" || !strings.Contains(c.Message, want) {
				return fmt.Errorf("TunnelConflict %s %s: %q lacks %q", c.Status, c.Reason, c.Message, want)
			}
		}
		return nil
	})
	_, body, err := scrape(context.Background(), a, "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"tnl-g", "tnl-h", "tnl-i"} {
		if want := fmt.Sprintf(`isthmus_tunnel_conflicts{kind="refused",remote_cluster="%s"} 1`, id); !strings.Contains(body, want) {
			t.Errorf("metrics lack %s:\n%s", want, grep(body, "isthmus_tunnel_conflicts"))
		}
	}
	routes := routesOf(t, a)
	for _, cidr := range []string{"default", "0.0.0.0/0", "128.0.0.0/1", "192.0.2.0/25", "10.207.0.0/16"} {
		if strings.Contains(routes, cidr) {
			t.Errorf("a route for a refused claim %s exists:\n%s", cidr, routes)
		}
	}
	peers := wgDevice(t, a).peers
	for _, k := range []string{gPub, hPub, iPub} {
		if _, ok := peers[k]; ok {
			t.Errorf("refused key %s became a peer", k)
		}
	}
	if err := reach(a, b, []byte("still-there"), time.Second); err != nil {
		t.Errorf("tnl-a no longer reaches tnl-b: %v", err)
	}
}
