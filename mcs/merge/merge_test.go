package merge

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

type option func(*brokerv1.ExportedServiceSpec)

func export(cluster string, age int, opts ...option) *brokerv1.ExportedService {
	e := &brokerv1.ExportedService{Spec: brokerv1.ExportedServiceSpec{
		SourceCluster: cluster, ServiceNamespace: "demo", ServiceName: "web",
		Type:                    brokerv1.ClusterSetIP,
		Ports:                   []brokerv1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}},
		IPFamilies:              []corev1.IPFamily{corev1.IPv4Protocol},
		ExportCreationTimestamp: metav1.NewTime(t0.Add(time.Duration(age) * time.Second)),
	}}
	for _, o := range opts {
		o(&e.Spec)
	}
	return e
}

func ports(p ...brokerv1.ServicePort) option {
	return func(s *brokerv1.ExportedServiceSpec) { s.Ports = p }
}
func headless(s *brokerv1.ExportedServiceSpec) { s.Type = brokerv1.Headless }
func clientIP(s *brokerv1.ExportedServiceSpec) { s.SessionAffinity = corev1.ServiceAffinityClientIP }
func label(k, v string) option {
	return func(s *brokerv1.ExportedServiceSpec) { s.ExportedLabels = map[string]string{k: v} }
}
func families(f ...corev1.IPFamily) option {
	return func(s *brokerv1.ExportedServiceSpec) { s.IPFamilies = f }
}
func localPolicy(s *brokerv1.ExportedServiceSpec) {
	p := corev1.ServiceInternalTrafficPolicyLocal
	s.InternalTrafficPolicy = &p
}
func distribution(d string) option {
	return func(s *brokerv1.ExportedServiceSpec) { s.TrafficDistribution = &d }
}
func tcp(name string, port int32) brokerv1.ServicePort {
	return brokerv1.ServicePort{Name: name, Protocol: corev1.ProtocolTCP, Port: port}
}
func udp(name string, port int32) brokerv1.ServicePort {
	return brokerv1.ServicePort{Name: name, Protocol: corev1.ProtocolUDP, Port: port}
}
func sctp(name string, port int32) brokerv1.ServicePort {
	return brokerv1.ServicePort{Name: name, Protocol: corev1.ProtocolSCTP, Port: port}
}

func TestMerge(t *testing.T) {
	tests := []struct {
		name        string
		exports     []*brokerv1.ExportedService
		wantWinner  string
		wantType    brokerv1.ServiceType
		wantPorts   []brokerv1.ServicePort
		wantReasons string // the Conflict condition's reason
		wantMessage []string
	}{
		{
			name:        "one export",
			exports:     []*brokerv1.ExportedService{export("a", 0)},
			wantWinner:  "a",
			wantType:    brokerv1.ClusterSetIP,
			wantPorts:   []brokerv1.ServicePort{tcp("http", 80)},
			wantReasons: "NoConflicts",
		},
		{
			name:        "agreeing exports",
			exports:     []*brokerv1.ExportedService{export("b", 0), export("a", 5)},
			wantWinner:  "b",
			wantType:    brokerv1.ClusterSetIP,
			wantPorts:   []brokerv1.ServicePort{tcp("http", 80)},
			wantReasons: "NoConflicts",
		},
		{
			name:        "same age: cluster id breaks the tie",
			exports:     []*brokerv1.ExportedService{export("b", 0, headless), export("a", 0)},
			wantWinner:  "a",
			wantType:    brokerv1.ClusterSetIP,
			wantPorts:   []brokerv1.ServicePort{tcp("http", 80)},
			wantReasons: "TypeConflict",
			wantMessage: []string{`Conflicting type. Using "ClusterSetIP" from oldest service export in "a". 1/2 clusters disagree: b.`},
		},
		{
			name:        "type conflict keeps the oldest's type",
			exports:     []*brokerv1.ExportedService{export("a", 10, headless), export("b", 0)},
			wantWinner:  "b",
			wantType:    brokerv1.ClusterSetIP,
			wantPorts:   []brokerv1.ServicePort{tcp("http", 80)},
			wantReasons: "TypeConflict",
		},
		{
			name: "ports are the union, SCTP included, and the cluster lacking one disagrees",
			exports: []*brokerv1.ExportedService{
				export("a", 0, ports(tcp("http", 80))),
				export("b", 1, ports(tcp("http", 80), sctp("sig", 9000))),
			},
			wantWinner:  "a",
			wantType:    brokerv1.ClusterSetIP,
			wantPorts:   []brokerv1.ServicePort{tcp("http", 80), sctp("sig", 9000)},
			wantReasons: "PortConflict",
			wantMessage: []string{`Conflicting ports. Using the union of every service export's ports: "http" TCP/80, "sig" SCTP/9000. 1/2 clusters disagree: a.`},
		},
		{
			// mcs-api's conformance suite: the first port shared, one more
			// on each side; both constituents lack a port of the union.
			name: "differing port sets: every constituent conflicts, the import has the union",
			exports: []*brokerv1.ExportedService{
				export("a", 0, ports(tcp("tcp", 42), udp("udp", 42))),
				export("b", 1, ports(tcp("tcp", 42), sctp("stcp", 142))),
			},
			wantWinner:  "a",
			wantType:    brokerv1.ClusterSetIP,
			wantPorts:   []brokerv1.ServicePort{tcp("tcp", 42), udp("udp", 42), sctp("stcp", 142)},
			wantReasons: "PortConflict",
			wantMessage: []string{`Using the union of every service export's ports: "tcp" TCP/42, "udp" UDP/42, "stcp" SCTP/142. 2/2 clusters disagree: a, b.`},
		},
		{
			name: "the same ports in another order agree; an unset protocol is TCP",
			exports: []*brokerv1.ExportedService{
				export("a", 0, ports(tcp("http", 80), udp("dns", 53))),
				export("b", 1, ports(udp("dns", 53), brokerv1.ServicePort{Name: "http", Port: 80})),
			},
			wantWinner:  "a",
			wantType:    brokerv1.ClusterSetIP,
			wantPorts:   []brokerv1.ServicePort{tcp("http", 80), udp("dns", 53)},
			wantReasons: "NoConflicts",
		},
		{
			name: "unnamed ports are one port by protocol and number",
			exports: []*brokerv1.ExportedService{
				export("a", 0, ports(tcp("", 80))),
				export("b", 1, ports(tcp("", 81))),
			},
			wantWinner:  "a",
			wantType:    brokerv1.ClusterSetIP,
			wantPorts:   []brokerv1.ServicePort{tcp("", 80)},
			wantReasons: "PortConflict",
			wantMessage: []string{`Conflicting port TCP/80. Using "TCP/80" from oldest service export in "a". 1/2 clusters disagree: b.`},
		},
		{
			name: "a port name with another number conflicts; the oldest's stays",
			exports: []*brokerv1.ExportedService{
				export("a", 0, ports(tcp("http", 80))),
				export("b", 1, ports(tcp("http", 8080), tcp("admin", 9090))),
				export("c", 2, ports(tcp("http", 8080))),
			},
			wantWinner:  "a",
			wantType:    brokerv1.ClusterSetIP,
			wantPorts:   []brokerv1.ServicePort{tcp("http", 80), tcp("admin", 9090)},
			wantReasons: "PortConflict",
			wantMessage: []string{
				`Conflicting port "http". Using "TCP/80" from oldest service export in "a". 2/3 clusters disagree: b, c.`,
				// b has "http", in another form: it lacks nothing of the union.
				`Conflicting ports. Using the union of every service export's ports: "http" TCP/80, "admin" TCP/9090. 2/3 clusters disagree: a, c.`,
			},
		},
		{
			name: "a port number under another name conflicts",
			exports: []*brokerv1.ExportedService{
				export("a", 0, ports(tcp("http", 80))),
				export("b", 1, ports(tcp("web", 80))),
			},
			wantWinner:  "a",
			wantType:    brokerv1.ClusterSetIP,
			wantPorts:   []brokerv1.ServicePort{tcp("http", 80)},
			wantReasons: "PortConflict",
		},
		{
			name: "several conflicts: every reason, in mcs-api's order",
			exports: []*brokerv1.ExportedService{
				export("a", 0),
				export("b", 1, headless, clientIP, label("tier", "web"), localPolicy, distribution("PreferClose"), ports(tcp("http", 81))),
			},
			wantWinner:  "a",
			wantType:    brokerv1.ClusterSetIP,
			wantPorts:   []brokerv1.ServicePort{tcp("http", 80)},
			wantReasons: "PortConflict,TypeConflict,SessionAffinityConflict,LabelsConflict,InternalTrafficPolicyConflict,TrafficDistributionConflict",
		},
		{
			name:        "disjoint IP families conflict",
			exports:     []*brokerv1.ExportedService{export("a", 0), export("b", 1, families(corev1.IPv6Protocol))},
			wantWinner:  "a",
			wantType:    brokerv1.ClusterSetIP,
			wantPorts:   []brokerv1.ServicePort{tcp("http", 80)},
			wantReasons: "IPFamilyConflict",
		},
		{
			name:        "overlapping IP families do not",
			exports:     []*brokerv1.ExportedService{export("a", 0), export("b", 1, families(corev1.IPv6Protocol, corev1.IPv4Protocol))},
			wantWinner:  "a",
			wantType:    brokerv1.ClusterSetIP,
			wantPorts:   []brokerv1.ServicePort{tcp("http", 80)},
			wantReasons: "NoConflicts",
		},
		{
			name:        "unset affinity equals None",
			exports:     []*brokerv1.ExportedService{export("a", 0), export("b", 1, func(s *brokerv1.ExportedServiceSpec) { s.SessionAffinity = corev1.ServiceAffinityNone })},
			wantWinner:  "a",
			wantType:    brokerv1.ClusterSetIP,
			wantPorts:   []brokerv1.ServicePort{tcp("http", 80)},
			wantReasons: "NoConflicts",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Merge(tt.exports)
			if r.Winner != tt.wantWinner {
				t.Errorf("winner %q, want %q", r.Winner, tt.wantWinner)
			}
			if r.Type != tt.wantType {
				t.Errorf("type %q, want %q", r.Type, tt.wantType)
			}
			if len(r.Ports) != len(tt.wantPorts) {
				t.Fatalf("ports %v, want %v", r.Ports, tt.wantPorts)
			}
			for i := range r.Ports {
				if r.Ports[i] != tt.wantPorts[i] {
					t.Errorf("port %d: %v, want %v", i, r.Ports[i], tt.wantPorts[i])
				}
			}
			cond := r.Condition(3)
			if string(cond.Reason) != tt.wantReasons {
				t.Errorf("reason %q, want %q", cond.Reason, tt.wantReasons)
			}
			wantStatus := metav1.ConditionTrue
			if tt.wantReasons == "NoConflicts" {
				wantStatus = metav1.ConditionFalse
			}
			if cond.Status != wantStatus || cond.Type != string(mcsv1beta1.ServiceExportConditionConflict) || cond.ObservedGeneration != 3 {
				t.Errorf("condition %+v", cond)
			}
			for _, m := range tt.wantMessage {
				if !strings.Contains(cond.Message, m) {
					t.Errorf("message %q lacks %q", cond.Message, m)
				}
			}
			if len(r.Clusters) != len(tt.exports) {
				t.Errorf("clusters %v", r.Clusters)
			}
		})
	}
}

func TestMergeNothing(t *testing.T) {
	if r := Merge(nil); r.Winner != "" || r.Ports != nil {
		t.Errorf("Merge(nil) = %+v", r)
	}
}

// TestMergeIsOrderIndependent checks that every agent, whatever order its
// informer lists the records in, reaches the same result.
func TestMergeIsOrderIndependent(t *testing.T) {
	a, b, c := export("a", 2, ports(tcp("http", 80))), export("b", 1, headless, ports(tcp("x", 1))), export("c", 1, ports(tcp("http", 81)))
	want := Merge([]*brokerv1.ExportedService{a, b, c}).Condition(0)
	for _, order := range [][]*brokerv1.ExportedService{{b, c, a}, {c, a, b}, {a, c, b}} {
		if got := Merge(order).Condition(0); got.Message != want.Message || got.Reason != want.Reason {
			t.Errorf("order-dependent result:\n%v\n%v", got, want)
		}
	}
}
