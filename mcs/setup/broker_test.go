package setup

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

var (
	clusterGVR         = brokerv1.ClustersResource
	exportedServiceGVR = brokerv1.ExportedServicesResource
)

func validCluster(id string) *brokerv1.Cluster {
	ranges, ok := approved[id]
	if !ok {
		ranges = approved[alpha]
	}
	return &brokerv1.Cluster{
		TypeMeta: metav1.TypeMeta{APIVersion: brokerv1.SchemeGroupVersion.String(), Kind: "Cluster"},
		ObjectMeta: metav1.ObjectMeta{Name: id, Namespace: brokerv1.DefaultBrokerNamespace,
			Labels: map[string]string{brokerv1.LabelSourceCluster: id}},
		Spec: brokerv1.ClusterSpec{
			ClusterID:    id,
			Region:       "eu",
			Zone:         "eu-1",
			Gateways:     []brokerv1.GatewayAddress{{Address: "192.0.2.10", Port: 15443}},
			WireGuard:    &brokerv1.WireGuardPeer{PublicKey: "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=", Endpoint: "192.0.2.10:51820"},
			PodCIDRs:     []string{ranges.pods},
			ServiceCIDRs: []string{ranges.svcs},
			Versions:     map[string]string{"agent": "v0.1.0"},
		},
	}
}

func validExport(cluster, ns, name string) *brokerv1.ExportedService {
	return &brokerv1.ExportedService{
		TypeMeta: metav1.TypeMeta{APIVersion: brokerv1.SchemeGroupVersion.String(), Kind: "ExportedService"},
		ObjectMeta: metav1.ObjectMeta{Name: brokerv1.ExportedServiceName(cluster, ns, name), Namespace: brokerv1.DefaultBrokerNamespace,
			Labels: map[string]string{brokerv1.LabelSourceCluster: cluster, brokerv1.LabelServiceName: name, brokerv1.LabelServiceNamespace: ns}},
		Spec: brokerv1.ExportedServiceSpec{
			SourceCluster:           cluster,
			ServiceNamespace:        ns,
			ServiceName:             name,
			Type:                    brokerv1.ClusterSetIP,
			Ports:                   []brokerv1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}},
			SessionAffinity:         corev1.ServiceAffinityNone,
			ExportCreationTimestamp: metav1.NewTime(time.Now().Truncate(time.Second)),
		},
	}
}

// TestCRDValidationRejectsBadRecords checks that the broker's CRDs reject
// malformed records with a message that names the field and the rule.
func TestCRDValidationRejectsBadRecords(t *testing.T) {
	hub, _, _ := joined(t)
	ctx := ctxFor(t)
	tests := []struct {
		name   string
		obj    func() runtime.Object
		gvr    string
		wantIn []string
	}{
		{"valid cluster", func() runtime.Object { return validCluster("valid-one") }, "clusters", nil},
		{"cluster id not a DNS label", func() runtime.Object {
			c := validCluster("under-score")
			c.Spec.ClusterID = "under_score"
			return c
		}, "clusters", []string{"spec.clusterID", "should match"}},
		{"cluster id with capitals", func() runtime.Object {
			c := validCluster("capitals")
			c.Spec.ClusterID = "Capitals"
			return c
		}, "clusters", []string{"spec.clusterID"}},
		{"name differs from cluster id", func() runtime.Object {
			c := validCluster("one-name")
			c.Spec.ClusterID = "other-name"
			return c
		}, "clusters", []string{"metadata.name must equal spec.clusterID"}},
		{"bad pod CIDR", func() runtime.Object {
			c := validCluster("bad-cidr")
			c.Spec.PodCIDRs = []string{"10.244.0.0/33"}
			return c
		}, "clusters", []string{"spec.podCIDRs[0]", "must be a CIDR"}},
		{"bad service CIDR", func() runtime.Object {
			c := validCluster("bad-svc-cidr")
			c.Spec.ServiceCIDRs = []string{"not-a-cidr"}
			return c
		}, "clusters", []string{"spec.serviceCIDRs[0]", "must be a CIDR"}},
		{"bad gateway address", func() runtime.Object {
			c := validCluster("bad-gw")
			c.Spec.Gateways[0].Address = "gateway.example"
			return c
		}, "clusters", []string{"spec.gateways[0].address", "must be an IP address"}},
		{"gateway port out of range", func() runtime.Object {
			c := validCluster("bad-gw-port")
			c.Spec.Gateways[0].Port = 70000
			return c
		}, "clusters", []string{"spec.gateways[0].port", "65535"}},
		{"bad WireGuard key", func() runtime.Object {
			c := validCluster("bad-key")
			c.Spec.WireGuard.PublicKey = "not-a-key"
			return c
		}, "clusters", []string{"spec.wireGuard.publicKey"}},
		{"bad WireGuard endpoint", func() runtime.Object {
			c := validCluster("bad-endpoint")
			c.Spec.WireGuard.Endpoint = "192.0.2.10"
			return c
		}, "clusters", []string{"spec.wireGuard.endpoint", "must be ip:port"}},
		{"valid export", func() runtime.Object { return validExport("valid-one", "demo", "web") }, "exportedservices", nil},
		{"port out of range", func() runtime.Object {
			e := validExport("ports", "demo", "web")
			e.Spec.Ports[0].Port = 65536
			return e
		}, "exportedservices", []string{"spec.ports[0].port", "65535"}},
		{"port zero", func() runtime.Object {
			e := validExport("port-zero", "demo", "web")
			e.Spec.Ports[0].Port = 0
			return e
		}, "exportedservices", []string{"spec.ports[0].port", "greater than or equal to 1"}},
		{"unknown type", func() runtime.Object {
			e := validExport("type", "demo", "web")
			e.Spec.Type = "LoadBalancer"
			return e
		}, "exportedservices", []string{"spec.type", `supported values: "ClusterSetIP", "Headless"`}},
		{"unknown protocol", func() runtime.Object {
			e := validExport("proto", "demo", "web")
			e.Spec.Ports[0].Protocol = "ICMP"
			return e
		}, "exportedservices", []string{"spec.ports[0].protocol"}},
		{"bad source cluster", func() runtime.Object {
			e := validExport("Bad", "demo", "web")
			e.Name = "web.demo.bad"
			return e
		}, "exportedservices", []string{"spec.sourceCluster"}},
		{"name not derived from the service", func() runtime.Object {
			e := validExport("named", "demo", "web")
			e.Name = "something-else"
			return e
		}, "exportedservices", []string{"metadata.name must be <serviceName>.<serviceNamespace>.<sourceCluster>"}},
		{"session affinity config on headless", func() runtime.Object {
			e := validExport("headless-affinity", "demo", "web")
			e.Spec.Type = brokerv1.Headless
			timeout := int32(30)
			e.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: &timeout}}
			return e
		}, "exportedservices", []string{"sessionAffinityConfig applies to ClusterSetIP services only"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := toUnstructured(t, tt.obj())
			gvr := clusterGVR
			if tt.gvr == "exportedservices" {
				gvr = exportedServiceGVR
			}
			_, err := hub.Dynamic.Resource(gvr).Namespace(brokerv1.DefaultBrokerNamespace).Create(ctx, u, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
			if tt.wantIn == nil {
				if err != nil {
					t.Fatalf("valid record rejected: %v", err)
				}
				return
			}
			wantErrContaining(t, err, tt.wantIn...)
		})
	}
}

// TestInstallAndJoinAreIdempotent runs broker install and both joins a
// second time and checks that nothing changes.
func TestInstallAndJoinAreIdempotent(t *testing.T) {
	hub, a, b := joined(t)
	ctx := ctxFor(t)
	secretBefore, err := a.Kube.CoreV1().Secrets(MemberNamespace).Get(ctx, BrokerSecret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := InstallBroker(ctx, hub, BrokerOptions{}, &out); err != nil {
		t.Fatal(err)
	}
	if _, err := Join(ctx, hub, a, JoinOptions{ClusterID: alpha}, &out); err != nil {
		t.Fatal(err)
	}
	// Without --cluster-id the member's ClusterProperty decides.
	if id, err := Join(ctx, hub, b, JoinOptions{}, &out); err != nil || id != beta {
		t.Fatalf("second join of member2 = %q, %v; want %q", id, err, beta)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) < 15 {
		t.Fatalf("second run reported only %d objects:\n%s", len(lines), out.String())
	}
	for _, l := range lines {
		// A note (no record counter runs here) reports no object.
		if !strings.Contains(l, " unchanged") && !strings.HasPrefix(l, "note: ") {
			t.Errorf("second run changed something: %s", l)
		}
	}
	secretAfter, err := a.Kube.CoreV1().Secrets(MemberNamespace).Get(ctx, BrokerSecret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if secretAfter.ResourceVersion != secretBefore.ResourceVersion {
		t.Errorf("broker Secret rewritten by a second join")
	}
	if strings.Contains(out.String(), "eyJ") {
		t.Errorf("output contains what looks like a token:\n%s", out.String())
	}
}

// TestJoinRefusesWrongInput checks the errors an operator gets for a join
// that cannot be right.
func TestJoinRefusesWrongInput(t *testing.T) {
	hub, a, b := joined(t)
	ctx := ctxFor(t)
	var out bytes.Buffer
	_, err := Join(ctx, hub, b, JoinOptions{ClusterID: "gamma"}, &out)
	wantErrContaining(t, err, `this cluster's id is already "beta"`, "--cluster-id=beta")

	// Approved ranges are checked before anything is written.
	_, err = Join(ctx, hub, b, JoinOptions{PodCIDRs: []string{approved[beta].pods}}, &out)
	wantErrContaining(t, err, "--pod-cidrs and --service-cidrs go together")
	for cidr, want := range map[string]string{
		"0.0.0.0/0":      "wider than /8",
		"2001:db8::/31":  "wider than /32",
		"10.242.0.1/16":  "did you mean 10.242.0.0/16?",
		"169.254.0.0/16": "reserved range 169.254.0.0/16",
		"10.242.0.0":     "is not a CIDR",
	} {
		_, err = Join(ctx, hub, b, JoinOptions{PodCIDRs: []string{cidr}, ServiceCIDRs: []string{approved[beta].svcs}}, &out)
		wantErrContaining(t, err, "--pod-cidrs", want)
	}
	// A range approved for alpha cannot be approved for beta too.
	_, err = Join(ctx, hub, b, JoinOptions{PodCIDRs: []string{"10.241.128.0/17"}, ServiceCIDRs: []string{approved[beta].svcs}}, &out)
	wantErrContaining(t, err, "10.241.128.0/17 overlaps "+approved[alpha].pods+", approved for cluster alpha")

	// A second cluster may not take an id in use: member2 pretends to be
	// alpha by changing its ClusterProperty.
	prop, err := b.Dynamic.Resource(clusterPropertyGVR).Get(ctx, ClusterIDProperty, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	prop.Object["spec"] = map[string]any{"value": alpha}
	if _, err := b.Dynamic.Resource(clusterPropertyGVR).Update(ctx, prop, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		prop, err := b.Dynamic.Resource(clusterPropertyGVR).Get(context.Background(), ClusterIDProperty, metav1.GetOptions{})
		if err == nil {
			prop.Object["spec"] = map[string]any{"value": beta}
			_, err = b.Dynamic.Resource(clusterPropertyGVR).Update(context.Background(), prop, metav1.UpdateOptions{})
		}
		if err != nil {
			t.Errorf("restoring member2's cluster id: %v", err)
		}
	})
	_, err = Join(ctx, hub, b, JoinOptions{}, &out)
	wantErrContaining(t, err, `cluster id "alpha" is already taken on the broker by another cluster`)

	_, err = Join(ctx, hub, a, JoinOptions{BrokerNamespace: "no-such-broker"}, &out)
	wantErrContaining(t, err, "broker namespace no-such-broker not found", "isthmusctl broker install")

	if _, err := Join(ctx, hub, a, JoinOptions{TokenTTL: time.Minute}, &out); err == nil {
		t.Error("join accepted a one-minute token")
	}
}
