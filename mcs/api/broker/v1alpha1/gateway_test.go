package v1alpha1

import (
	"strings"
	"testing"
)

func TestEgressPortsRoundTrip(t *testing.T) {
	in := []EgressPort{{Protocol: "UDP", Port: 53, Egress: 16001}, {Protocol: "TCP", Port: 80, Egress: 16000}}
	s := FormatEgressPorts(in)
	if s != "TCP/80=16000,UDP/53=16001" {
		t.Fatalf("FormatEgressPorts = %q", s)
	}
	out, err := ParseEgressPorts(s)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 2 || out[0] != (EgressPort{Protocol: "TCP", Port: 80, Egress: 16000}) || out[1] != in[0] {
		t.Fatalf("ParseEgressPorts = %+v", out)
	}
}

func TestParseEgressPortsErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"TCP/80", "want PROTOCOL/PORT=EGRESS"},
		{"80=16000", "want PROTOCOL/PORT=EGRESS"},
		{"HTTP/80=16000", "not TCP, UDP or SCTP"},
		{"TCP/0=16000", "service port"},
		{"TCP/80=70000", "egress port"},
		{"TCP/80=16000,TCP/81=16000", "appears twice"},
	} {
		_, err := ParseEgressPorts(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseEgressPorts(%q) = %v, want an error containing %q", tc.in, err, tc.want)
		}
	}
	if p, err := ParseEgressPorts(""); err != nil || p != nil {
		t.Errorf("ParseEgressPorts(\"\") = %v, %v", p, err)
	}
}

func FuzzParseEgressPorts(f *testing.F) {
	f.Add("TCP/80=16000,UDP/53=16001")
	f.Add("SCTP/1=65535")
	f.Fuzz(func(t *testing.T, s string) {
		ports, err := ParseEgressPorts(s)
		if err != nil {
			return
		}
		again, err := ParseEgressPorts(FormatEgressPorts(ports))
		if err != nil || len(again) != len(ports) {
			t.Fatalf("round trip of %q failed: %v", s, err)
		}
	})
}

func TestIdentityNames(t *testing.T) {
	if got := GatewaySPIFFEID("a", DefaultClustersetDomain); got != "spiffe://a.clusterset.isthmus/ns/isthmus-system/sa/isthmus-gateway" {
		t.Fatalf("GatewaySPIFFEID = %q", got)
	}
}
