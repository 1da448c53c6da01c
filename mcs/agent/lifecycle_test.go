package agent_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
)

const propagation = 30 * time.Second

// TestExportImportLifecycle: a Service exported in a is imported in a, b
// and c (the exporting cluster too), with a ClusterSetIP from each
// importer's own range, the exporter listed, MCS EndpointSlices listing the
// pods, endpoint changes following, and everything gone again after the
// unexport.
func TestExportImportLifecycle(t *testing.T) {
	clusterset(t)
	ctx := ctxFor(t, 3*time.Minute)
	ns := "lifecycle"
	namespace(t, ctx, ns, 0, 1, 2)
	workload(t, ctx, 0, ns, "web", 2, false)
	exportService(t, ctx, 0, ns, "web", nil, map[string]string{"tier": "frontend"})

	eventually(t, propagation, "export conditions in a", wantCondition(ctx, t, 0, ns, "web", mcsv1beta1.ServiceExportConditionReady, metav1.ConditionTrue, "Exported"))
	for _, cond := range []func() error{
		wantCondition(ctx, t, 0, ns, "web", mcsv1beta1.ServiceExportConditionValid, metav1.ConditionTrue, "Valid"),
		wantCondition(ctx, t, 0, ns, "web", mcsv1beta1.ServiceExportConditionConflict, metav1.ConditionFalse, "NoConflicts"),
	} {
		eventually(t, propagation, "export conditions in a", cond)
	}
	for i := range clusters.Members {
		eventually(t, propagation, fmt.Sprintf("import in %s", ids[i]), func() error {
			v, err := viewImport(ctx, t, i, ns, "web")
			if err != nil {
				return err
			}
			si := v.si
			if si.Spec.Type != mcsv1beta1.ClusterSetIP || len(si.Spec.Ports) != 1 || si.Spec.Ports[0].Port != 80 || si.Spec.Ports[0].Name != "http" {
				return fmt.Errorf("spec %+v", si.Spec)
			}
			if !inCIDR(si.Spec.IPs, clusters.Members[i].ServiceCIDR) || len(si.Spec.IPFamilies) != len(si.Spec.IPs) {
				return fmt.Errorf("ClusterSetIP %v (families %v) not from %s", si.Spec.IPs, si.Spec.IPFamilies, clusters.Members[i].ServiceCIDR)
			}
			if got := statusClusters(si); !slices.Equal(got, []string{"a"}) {
				return fmt.Errorf("status.clusters %v", got)
			}
			if si.Status.EndpointSliceObjects != mcsv1beta1.EndpointSliceObjectsPresent {
				return fmt.Errorf("status.endpointSliceObjects %q, want Present", si.Status.EndpointSliceObjects)
			}
			if si.Labels["tier"] != "frontend" || si.Labels["not"] != "" || si.Labels["team"] != "" {
				return fmt.Errorf("only exported labels may travel: %v", si.Labels)
			}
			if want := podIPs(ctx, t, 0, ns, "web"); len(want) != 2 || !slices.Equal(v.endpoints["a"], want) {
				return fmt.Errorf("MCS endpoints %v, want a's pods %v", v.endpoints, want)
			}
			if !slices.Equal(v.derived, []string{"a"}) {
				return fmt.Errorf("derived Service endpoints from %v, want [a]", v.derived)
			}
			return nil
		})
	}

	scale(t, ctx, 0, ns, "web", 3)
	eventually(t, propagation, "scaled endpoints in c", func() error {
		v, err := viewImport(ctx, t, 2, ns, "web")
		if err != nil {
			return err
		}
		if want := podIPs(ctx, t, 0, ns, "web"); len(want) != 3 || !slices.Equal(v.endpoints["a"], want) {
			return fmt.Errorf("endpoints %v, want %v", v.endpoints["a"], want)
		}
		return nil
	})

	// The Service's port changes and the exported label goes. The agents
	// write their records and imports whole, so nothing of the old port
	// or label stays anywhere, and what someone else added to an import
	// stays.
	for i := range clusters.Members {
		if _, err := mcs(t, i).MulticlusterV1beta1().ServiceImports(ns).Patch(ctx, "web", types.MergePatchType,
			[]byte(`{"metadata":{"annotations":{"example.com/note":"kept"}}}`), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	svc, err := clusters.Members[0].Client.CoreV1().Services(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svc.Spec.Ports = []corev1.ServicePort{{Name: "grpc", Port: 9090, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromString("http")}}
	if _, err := clusters.Members[0].Client.CoreV1().Services(ns).Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := mcs(t, 0).MulticlusterV1beta1().ServiceExports(ns).Patch(ctx, "web", types.MergePatchType,
		[]byte(`{"spec":{"exportedLabels":null}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	for i := range clusters.Members {
		eventually(t, propagation, fmt.Sprintf("new port in %s", ids[i]), func() error {
			si, err := mcs(t, i).MulticlusterV1beta1().ServiceImports(ns).Get(ctx, "web", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if len(si.Spec.Ports) != 1 || si.Spec.Ports[0].Name != "grpc" || si.Spec.Ports[0].Port != 9090 {
				return fmt.Errorf("ports %+v, want only grpc 9090", si.Spec.Ports)
			}
			if _, ok := si.Labels["tier"]; ok {
				return fmt.Errorf("the label no longer exported is still there: %v", si.Labels)
			}
			if si.Annotations["example.com/note"] != "kept" {
				return fmt.Errorf("someone else's annotation is gone: %v", si.Annotations)
			}
			return nil
		})
	}

	unexport(t, ctx, 0, ns, "web")
	for i := range clusters.Members {
		eventually(t, 20*time.Second, fmt.Sprintf("import gone from %s", ids[i]), func() error {
			_, err := mcs(t, i).MulticlusterV1beta1().ServiceImports(ns).Get(ctx, "web", metav1.GetOptions{})
			if !apierrors.IsNotFound(err) {
				return fmt.Errorf("ServiceImport still there (%v)", err)
			}
			slices, err := clusters.Members[i].Client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: "endpointslice.kubernetes.io/managed-by=isthmus.dev"})
			if err != nil || len(slices.Items) > 0 {
				return fmt.Errorf("%d imported EndpointSlices left (%v)", len(slices.Items), err)
			}
			svcs, err := clusters.Members[i].Client.CoreV1().Services(ns).List(ctx, metav1.ListOptions{LabelSelector: "isthmus.dev/derived-for"})
			if err != nil || len(svcs.Items) > 0 {
				return fmt.Errorf("%d derived Services left (%v)", len(svcs.Items), err)
			}
			return nil
		})
	}
}

// TestInvalidExports: an export without its Service says NoService and
// recovers when the Service appears; an ExternalName Service says
// InvalidServiceType and is imported nowhere.
func TestInvalidExports(t *testing.T) {
	clusterset(t)
	ctx := ctxFor(t, 2*time.Minute)
	ns := "invalid"
	namespace(t, ctx, ns, 0, 1, 2)

	exportService(t, ctx, 1, ns, "later", nil, nil)
	eventually(t, propagation, "NoService", wantCondition(ctx, t, 1, ns, "later", mcsv1beta1.ServiceExportConditionValid, metav1.ConditionFalse, "NoService", "does not exist"))
	always(t, 2*time.Second, "no import without a Service", func() error {
		if _, err := mcs(t, 2).MulticlusterV1beta1().ServiceImports(ns).Get(ctx, "later", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("import exists: %v", err)
		}
		return nil
	})
	workload(t, ctx, 1, ns, "later", 1, false)
	eventually(t, propagation, "valid once the Service exists", wantCondition(ctx, t, 1, ns, "later", mcsv1beta1.ServiceExportConditionValid, metav1.ConditionTrue, "Valid"))
	eventually(t, propagation, "imported in c", func() error {
		_, err := viewImport(ctx, t, 2, ns, "later")
		return err
	})

	if _, err := clusters.Members[1].Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "external", Namespace: ns},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "db.example.com"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	exportService(t, ctx, 1, ns, "external", nil, nil)
	eventually(t, propagation, "InvalidServiceType", wantCondition(ctx, t, 1, ns, "external", mcsv1beta1.ServiceExportConditionValid, metav1.ConditionFalse, "InvalidServiceType", "ExternalName"))
	always(t, 2*time.Second, "ExternalName imported nowhere", func() error {
		for i := range clusters.Members {
			if _, err := mcs(t, i).MulticlusterV1beta1().ServiceImports(ns).Get(ctx, "external", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				return fmt.Errorf("import in %s: %v", ids[i], err)
			}
		}
		return nil
	})
	events, err := clusters.Members[1].Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=external"})
	if err != nil || len(events.Items) == 0 {
		t.Errorf("no Event on the invalid export (%v)", err)
	}
}

// TestConflicts: the same service exported from a, then b with another
// type and an extra SCTP port: both exports say Conflict naming a as the
// winner, the import keeps a's type, ports are the union, both clusters
// are listed. Then b agrees on the type but still has a port a lacks:
// both say PortConflict alone, with the union imported (mcs-api's
// conformance suite asks for the condition on every constituent). When b
// agrees again, the conflict clears.
func TestConflicts(t *testing.T) {
	clusterset(t)
	ctx := ctxFor(t, 2*time.Minute)
	ns := "conflict"
	namespace(t, ctx, ns, 0, 1, 2)
	workload(t, ctx, 0, ns, "db", 1, false)
	exportService(t, ctx, 0, ns, "db", nil, nil)
	eventually(t, propagation, "a exported", wantCondition(ctx, t, 0, ns, "db", mcsv1beta1.ServiceExportConditionReady, metav1.ConditionTrue, "Exported"))
	time.Sleep(1100 * time.Millisecond) // creation timestamps have 1 s granularity
	workload(t, ctx, 1, ns, "db", 1, true, port{"http", corev1.ProtocolTCP, 80}, port{"sig", corev1.ProtocolSCTP, 9000})
	exportService(t, ctx, 1, ns, "db", nil, nil)

	for _, i := range []int{0, 1} {
		eventually(t, propagation, fmt.Sprintf("conflict on %s's export", ids[i]),
			wantCondition(ctx, t, i, ns, "db", mcsv1beta1.ServiceExportConditionConflict, metav1.ConditionTrue, "PortConflict,TypeConflict",
				`Conflicting type. Using "ClusterSetIP" from oldest service export in "a". 1/2 clusters disagree: b.`,
				`Conflicting ports. Using the union of every service export's ports: "http" TCP/80, "sig" SCTP/9000. 1/2 clusters disagree: a.`))
	}
	unionImported := func() error {
		v, err := viewImport(ctx, t, 2, ns, "db")
		if err != nil {
			return err
		}
		si := v.si
		if si.Spec.Type != mcsv1beta1.ClusterSetIP {
			return fmt.Errorf("type %s, want the oldest's ClusterSetIP", si.Spec.Type)
		}
		var ports []string
		for _, p := range si.Spec.Ports {
			ports = append(ports, fmt.Sprintf("%s/%s/%d", p.Name, p.Protocol, p.Port))
		}
		if !slices.Equal(ports, []string{"http/TCP/80", "sig/SCTP/9000"}) {
			return fmt.Errorf("ports %v, want the union", ports)
		}
		if got := statusClusters(si); !slices.Equal(got, []string{"a", "b"}) {
			return fmt.Errorf("clusters %v", got)
		}
		if len(v.endpoints["a"]) != 1 || len(v.endpoints["b"]) != 1 {
			return fmt.Errorf("endpoints %v, want one from each", v.endpoints)
		}
		return nil
	}
	eventually(t, propagation, "merged import in c", unionImported)

	// b agrees on the type: a ClusterIP Service, still with the SCTP port.
	if err := clusters.Members[1].Client.CoreV1().Services(ns).Delete(ctx, "db", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	b, err := clusters.Members[1].Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: ns},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "db"}, Ports: []corev1.ServicePort{
			{Name: "http", Port: 80}, {Name: "sig", Port: 9000, Protocol: corev1.ProtocolSCTP}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, 1} {
		eventually(t, propagation, fmt.Sprintf("port conflict alone on %s's export", ids[i]),
			wantCondition(ctx, t, i, ns, "db", mcsv1beta1.ServiceExportConditionConflict, metav1.ConditionTrue, "PortConflict",
				`"sig" SCTP/9000. 1/2 clusters disagree: a.`))
	}
	eventually(t, propagation, "the union still imported in c", unionImported)

	// b agrees again: a's ports.
	b.Spec.Ports = b.Spec.Ports[:1]
	if _, err := clusters.Members[1].Client.CoreV1().Services(ns).Update(ctx, b, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, 1} {
		eventually(t, propagation, fmt.Sprintf("conflict cleared on %s", ids[i]),
			wantCondition(ctx, t, i, ns, "db", mcsv1beta1.ServiceExportConditionConflict, metav1.ConditionFalse, "NoConflicts"))
	}
}

// TestNamespaceSameness: a service is imported only where its namespace
// exists, and as soon as it appears.
func TestNamespaceSameness(t *testing.T) {
	clusterset(t)
	ctx := ctxFor(t, 2*time.Minute)
	ns := "only-a-and-b"
	namespace(t, ctx, ns, 0, 1)
	workload(t, ctx, 0, ns, "api", 1, false)
	exportService(t, ctx, 0, ns, "api", nil, nil)
	eventually(t, propagation, "imported in b", func() error {
		_, err := viewImport(ctx, t, 1, ns, "api")
		return err
	})
	if _, err := clusters.Members[2].Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("c has the namespace: %v", err)
	}
	namespace(t, ctx, ns, 2)
	eventually(t, propagation, "imported in c once the namespace exists", func() error {
		_, err := viewImport(ctx, t, 2, ns, "api")
		return err
	})
}

// TestLocalityFailover: with the service exported from a (eu) and b (us),
// a's and c's derived Services use a's endpoints (local, then same
// region) and b's use b's; when a has no endpoint left, a and c fail over
// to b; when a's come back, traffic returns. The MCS slices list both
// clusters throughout.
func TestLocalityFailover(t *testing.T) {
	clusterset(t)
	ctx := ctxFor(t, 3*time.Minute)
	ns := "failover"
	namespace(t, ctx, ns, 0, 1, 2)
	workload(t, ctx, 0, ns, "echo", 2, false)
	workload(t, ctx, 1, ns, "echo", 2, false)
	exportService(t, ctx, 0, ns, "echo", nil, nil)
	exportService(t, ctx, 1, ns, "echo", nil, nil)

	wantDerived := func(want ...[]string) func() error {
		return func() error {
			for i := range clusters.Members {
				v, err := viewImport(ctx, t, i, ns, "echo")
				if err != nil {
					return err
				}
				if !slices.Equal(v.derived, want[i]) {
					return fmt.Errorf("%s's derived Service uses %v, want %v", ids[i], v.derived, want[i])
				}
				if len(v.endpoints) != 2 {
					return fmt.Errorf("%s's MCS slices list %v, want both clusters", ids[i], v.endpoints)
				}
			}
			return nil
		}
	}
	eventually(t, propagation, "local first", wantDerived([]string{"a"}, []string{"b"}, []string{"a"}))
	scale(t, ctx, 0, ns, "echo", 0)
	eventually(t, propagation, "failover to b", func() error {
		for i := range clusters.Members {
			v, err := viewImport(ctx, t, i, ns, "echo")
			if err != nil {
				return err
			}
			if !slices.Equal(v.derived, []string{"b"}) {
				return fmt.Errorf("%s's derived Service uses %v, want [b]", ids[i], v.derived)
			}
		}
		return nil
	})
	scale(t, ctx, 0, ns, "echo", 2)
	eventually(t, propagation, "back to a", wantDerived([]string{"a"}, []string{"b"}, []string{"a"}))
}
