package agent

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// The import plan is where every other member's records meet: FuzzPlanImport
// builds hostile records of several members from the fuzzer's bytes and
// checks what no record may make the plan do. The kept corpus is in
// testdata/fuzz/FuzzPlanImport.

// fuzzMembers are the clusters of the fuzzed clusterset, "a" the importer.
// Each other member has its own approved pod range; "d" claims none.
var fuzzMembers = []struct {
	id   string
	pods []netip.Prefix
}{
	{"a", []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}},
	{"b", []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16"), netip.MustParsePrefix("fd00:2::/48")}},
	{"c", []netip.Prefix{netip.MustParsePrefix("10.3.0.0/24")}},
	{"d", nil},
}

// fuzzReader hands out the fuzzer's bytes as small choices; once they run
// out every choice is zero, so any input makes a complete clusterset.
type fuzzReader struct{ b []byte }

func (r *fuzzReader) byte() byte {
	if len(r.b) == 0 {
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *fuzzReader) intn(n int) int { return int(r.byte()) % n }

// string takes a length byte and that many bytes, as they are: names and
// annotations may be anything a member writes.
func (r *fuzzReader) string() string {
	n := r.intn(24)
	if n > len(r.b) {
		n = len(r.b)
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}

// address is an endpoint address a member might list: inside some
// member's range, outside every range, of the other family, in a
// non-canonical form, or any string at all.
func (r *fuzzReader) address() string {
	x, y := r.byte(), r.byte()
	switch r.intn(8) {
	case 0:
		return fmt.Sprintf("10.%d.%d.%d", r.intn(5), x, y)
	case 1:
		return fmt.Sprintf("fd00:%x::%x", r.intn(4), y)
	case 2:
		return fmt.Sprintf("198.51.100.%d", y)
	case 3:
		return fmt.Sprintf("::ffff:10.2.%d.%d", x, y)
	case 4:
		return fmt.Sprintf("010.2.%d.%d", x, y)
	case 5:
		return fmt.Sprintf("10.2.%d.%d%%eth0", x, y)
	case 6:
		return fmt.Sprintf("%d.%d.0.0", x, y)
	default:
		return r.string()
	}
}

func (r *fuzzReader) export(cluster string) *brokerv1.ExportedService {
	types := []brokerv1.ServiceType{brokerv1.ClusterSetIP, brokerv1.Headless, brokerv1.ServiceType(r.string())}
	protocols := []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP, corev1.Protocol(r.string())}
	e := planExport(cluster, r.intn(256)-128, types[r.intn(len(types))], []string{"", LocalitySpread, LocalityRemoteFirst, r.string()}[r.intn(4)])
	e.Spec.Ports = nil
	for range r.intn(4) {
		e.Spec.Ports = append(e.Spec.Ports, brokerv1.ServicePort{Name: r.string(), Protocol: protocols[r.intn(len(protocols))], Port: int32(r.intn(256)) - 8})
	}
	if r.intn(2) == 0 {
		// The export claims to be older than anything: the clamp to its
		// cluster's joining must hold.
		e.Spec.ExportCreationTimestamp = metav1.NewTime(time.Unix(int64(r.intn(256))-128, 0))
	}
	if r.intn(4) == 0 {
		// It may even claim another cluster as its source.
		e.Spec.SourceCluster = fuzzMembers[r.intn(len(fuzzMembers))].id
	}
	e.Annotations = map[string]string{brokerv1.AnnotationEgressPorts: r.string(), r.string(): r.string()}
	return e
}

func (r *fuzzReader) slices(cluster string) []*discoveryv1.EndpointSlice {
	var out []*discoveryv1.EndpointSlice
	families := []discoveryv1.AddressType{discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6, discoveryv1.AddressTypeFQDN, discoveryv1.AddressType(r.string())}
	for range r.intn(4) {
		s := &discoveryv1.EndpointSlice{AddressType: families[r.intn(len(families))],
			ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{brokerv1.LabelSourceCluster: cluster}}}
		for range r.intn(3) {
			s.Ports = append(s.Ports, discoveryv1.EndpointPort{Name: new(r.string()), Port: new(int32(r.intn(256)))})
		}
		// Sometimes far more endpoints than the per-cluster limit, all
		// inside the member's range: the cap must hold.
		n := r.intn(6)
		if r.intn(16) == 0 {
			n = maxEndpointsPerCluster + 1 + r.intn(64)
		}
		for i := range n {
			node := "node-of-" + cluster
			e := discoveryv1.Endpoint{NodeName: &node, Hostname: new(r.string()), Zone: new(r.string()),
				Conditions: discoveryv1.EndpointConditions{Ready: new(r.intn(2) == 0)},
				Hints:      &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: "z"}}},
				TargetRef:  &corev1.ObjectReference{Kind: "Pod", Name: "p"}}
			if n > maxEndpointsPerCluster {
				e.Addresses = []string{fmt.Sprintf("10.2.%d.%d", i/256, i%256)}
			} else {
				for range 1 + r.intn(2) {
					e.Addresses = append(e.Addresses, r.address())
				}
			}
			s.Endpoints = append(s.Endpoints, e)
		}
		out = append(out, s)
	}
	return out
}

// input is the clusterset as the fuzzer's bytes describe it, and each
// member's approved pod ranges by cluster id.
func (r *fuzzReader) input() (importInput, map[string][]netip.Prefix) {
	in := importInput{Namespace: "ns", Name: "web", Local: "a", Region: "eu",
		Endpoints: map[string][]*discoveryv1.EndpointSlice{}, Clusters: map[string]clusterState{}}
	approved := map[string][]netip.Prefix{}
	joined := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	healths := []brokerv1.Health{brokerv1.Healthy, brokerv1.Lapsed, brokerv1.Withdrawn}
	for _, m := range fuzzMembers {
		approved[m.id] = m.pods
		in.Clusters[m.id] = clusterState{Health: healths[r.intn(len(healths))], Unreachable: r.intn(2) == 0,
			Region: []string{"eu", "us", ""}[r.intn(3)], PodCIDRs: m.pods, Claimed: len(m.pods) > 0, Joined: joined}
		for range r.intn(3) {
			in.Exports = append(in.Exports, r.export(m.id))
		}
		in.Endpoints[m.id] = r.slices(m.id)
	}
	if r.intn(2) == 0 {
		in.Derived = &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: derivedServiceName("web"), Namespace: "ns"},
			Spec: corev1.ServiceSpec{ClusterIPs: []string{"10.96.0.7"}, IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol}}}
	}
	return in, approved
}

// FuzzPlanImport: whatever several members write, the plan never panics,
// never takes another member's endpoint address outside that member's
// approved pod ranges (nor anything of a member that claims none), never
// lets a foreign node name, target or hint cross, takes at most
// maxEndpointsPerCluster endpoints from one member, writes a bounded
// number of slices with names the apiserver accepts, never lets an export
// win with a time before its cluster joined, and keeps the ServiceImport's
// condition message within its limit.
func FuzzPlanImport(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("\x00\x01\x00\x00\x01\x02\x00\x00\x00\x03\x01\x00\x02\x00\x05\x07"))
	f.Add([]byte("\x01\x00\x01\x02\x02\x01\x00\x01\x00\x02\x01\x00\x00\x00\x00\x00\x10\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := &fuzzReader{b: data}
		in, approved := r.input()
		p := planImport(in)
		if p.Remove {
			return
		}
		for _, c := range p.Merged.Clusters {
			if in.Clusters[c].Health == brokerv1.Withdrawn {
				t.Errorf("withdrawn cluster %s in the import", c)
			}
		}
		// The oldest export wins, and no export is older than its
		// cluster's joining, whatever time it claims.
		eff := map[string]time.Time{}
		for _, e := range in.Exports {
			st := in.Clusters[e.Spec.SourceCluster]
			if st.Health == brokerv1.Withdrawn {
				continue
			}
			at := brokerv1.EffectiveExportTime(e.Spec.ExportCreationTimestamp, st.Joined).Time
			if have, ok := eff[e.Spec.SourceCluster]; !ok || at.Before(have) {
				eff[e.Spec.SourceCluster] = at
			}
		}
		for c, at := range eff {
			if at.Before(eff[p.Merged.Winner]) {
				t.Errorf("%s won, but %s exported earlier (%v before %v)", p.Merged.Winner, c, at, eff[p.Merged.Winner])
			}
			if at.Before(in.Clusters[c].Joined) {
				t.Errorf("the export of %s counts from %v, before its cluster joined", c, at)
			}
		}
		// Four members, two families, an MCS and a derived slice each, and
		// the gateway's two: nothing a member writes makes more.
		if max := len(fuzzMembers)*2*2 + 2; len(p.Slices) > max {
			t.Errorf("%d slices planned, more than %d", len(p.Slices), max)
		}
		perCluster := map[string]int{}
		for name, s := range p.Slices {
			if len(name) > 253 || name != s.Name {
				t.Errorf("slice name %q", name)
			}
			c := s.Labels[brokerv1.LabelSourceCluster]
			if s.Labels[labelSliceRole] == roleMCS {
				perCluster[c] += len(s.Endpoints)
			}
			for _, e := range s.Endpoints {
				if c != in.Local && (e.NodeName != nil || e.TargetRef != nil || e.Hints != nil) {
					t.Errorf("foreign fields of %s crossed: %+v", c, e)
				}
				for _, a := range e.Addresses {
					if c == in.Local {
						continue
					}
					ip, err := netip.ParseAddr(a)
					if err != nil || !brokerv1.EndpointAllowed(ip, approved[c]) || ip.Is4() != (s.AddressType == discoveryv1.AddressTypeIPv4) {
						t.Errorf("took %q from %s, whose approved pod ranges are %v, in a %s slice", a, c, approved[c], s.AddressType)
					}
				}
			}
		}
		for c, n := range perCluster {
			if c != in.Local && n > maxEndpointsPerCluster {
				t.Errorf("took %d endpoints from %s, over the limit of %d", n, c, maxEndpointsPerCluster)
			}
		}
		var st mcsv1beta1.ServiceImportStatus
		setRefusedCondition(&st, p.Refused, 1)
		for _, c := range st.Conditions {
			if len(c.Message) > 2048 {
				t.Errorf("condition message of %d bytes", len(c.Message))
			}
		}
	})
}
