package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsclientset "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/isthmus-dev/isthmus/test/cluster"
)

// TestExportAndStatus: export writes the ServiceExport, status reads the
// clusterset through join's stored broker credential in every format,
// unexport removes the export, and bad input is refused clearly.
func TestExportAndStatus(t *testing.T) {
	cs := cluster.Start(t, cluster.Options{Broker: true, Members: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	kc := cs.Kubeconfig
	ctl := func(args ...string) (string, string, error) {
		var stdout, stderr bytes.Buffer
		err := run(ctx, args, &stdout, &stderr)
		return stdout.String(), stderr.String(), err
	}
	for _, args := range [][]string{
		{"broker", "install", "--kubeconfig", kc, "--context", "broker"},
		{"join", "--kubeconfig", kc, "--context", "member1", "--broker-context", "broker", "--cluster-id", "east"},
	} {
		if _, stderr, err := ctl(args...); err != nil {
			t.Fatalf("isthmusctl %v: %v\n%s", args, err, stderr)
		}
	}
	m := cs.Members[0]
	if _, err := m.Client.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	out, stderr, err := ctl("export", "web", "--kubeconfig", kc, "--context", "member1", "--locality", "spread")
	if err != nil || !strings.Contains(out, "serviceexport default/web created") || stderr != "" {
		t.Fatalf("export: %v\n%s%s", err, out, stderr)
	}
	if out, _, _ := ctl("export", "web", "--kubeconfig", kc, "--context", "member1"); !strings.Contains(out, "unchanged") {
		t.Errorf("second export: %s", out)
	}
	if _, stderr, err := ctl("export", "ghost", "--kubeconfig", kc, "--context", "member1", "-n", "default"); err != nil || !strings.Contains(stderr, "no Service default/ghost") {
		t.Errorf("export of a missing Service: %v, stderr %q; want a warning", err, stderr)
	}
	se, err := mcsClient(t, m).MulticlusterV1beta1().ServiceExports("default").Get(ctx, "web", metav1.GetOptions{})
	if err != nil || se.Annotations["isthmus.dev/locality"] != "spread" {
		t.Fatalf("ServiceExport default/web: %v %v", se, err)
	}

	// No agent runs: the exports have no conditions, so status reports
	// and fails.
	out, stderr, err = ctl("status", "--kubeconfig", kc, "--context", "member1", "-o", "json")
	if !isChecksFailed(err) {
		t.Fatalf("status: %v, want a failed check\n%s", err, stderr)
	}
	var rep statusReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("status -o json: %v\n%s", err, out)
	}
	if rep.Cluster != "east" || !strings.Contains(rep.Broker, cs.Broker.Config.Host) {
		t.Errorf("status names cluster %q, broker %q", rep.Cluster, rep.Broker)
	}
	var names []string
	for _, e := range rep.Exports {
		names = append(names, e.Namespace+"/"+e.Name)
	}
	if strings.Join(names, ",") != "default/ghost,default/web" {
		t.Errorf("exports %v, want default/ghost and default/web", names)
	}
	if len(rep.Problems) != 2 || !strings.Contains(rep.Problems[1], "export default/web in east: Valid=Unknown") {
		t.Errorf("problems %q, want one per export", rep.Problems)
	}
	for _, format := range []string{"table", "wide", "yaml"} {
		out, stderr, err := ctl("status", "--kubeconfig", kc, "--context", "member1", "-o", format)
		if !isChecksFailed(err) || !strings.Contains(out, "web") {
			t.Errorf("status -o %s: %v\n%s%s", format, err, out, stderr)
		}
	}

	// No agent runs here: diagnose says the export has no conditions and
	// that no cluster exports it, and what to do about each.
	out, stderr, err = ctl("diagnose", "web.default", "--kubeconfig", kc, "--context", "member1", "-o", "json")
	if !isChecksFailed(err) {
		t.Fatalf("diagnose: %v\n%s", err, stderr)
	}
	var findings []finding
	if err := json.Unmarshal([]byte(out), &findings); err != nil {
		t.Fatalf("diagnose -o json: %v\n%s", err, out)
	}
	got := map[string]finding{}
	for _, f := range findings {
		got[f.Check] = f
	}
	if f := got["export here"]; f.OK || !strings.Contains(f.Advice, "isthmus agent") {
		t.Errorf("export check: %+v", f)
	}
	if f := got["broker records"]; f.OK || !strings.Contains(f.Advice, "isthmusctl export web -n default") {
		t.Errorf("broker records check: %+v", f)
	}
	if out, _, _ := ctl("diagnose", "web.default", "--kubeconfig", kc, "--context", "member1"); !strings.Contains(out, "what to do:") {
		t.Errorf("diagnose table gives no advice:\n%s", out)
	}

	if out, _, err := ctl("unexport", "web", "--kubeconfig", kc, "--context", "member1"); err != nil || !strings.Contains(out, "deleted") {
		t.Errorf("unexport: %v %s", err, out)
	}
	if out, _, err := ctl("unexport", "web", "--kubeconfig", kc, "--context", "member1"); err != nil || !strings.Contains(out, "not found") {
		t.Errorf("second unexport: %v %s", err, out)
	}
	for _, bad := range []struct {
		args []string
		want string
	}{
		{[]string{"export"}, "usage: isthmusctl export <service>"},
		{[]string{"export", "web", "--locality", "nearby", "--kubeconfig", kc, "--context", "member1"}, `--locality "nearby"`},
		{[]string{"status", "-o", "xml", "--kubeconfig", kc, "--context", "member1"}, `-o "xml"`},
		{[]string{"status", "--kubeconfig", kc, "--context", "broker"}, "isthmusctl join"},
		{[]string{"diagnose"}, "usage: isthmusctl diagnose <service>.<namespace>"},
		{[]string{"diagnose", "web.default", "-n", "other", "--kubeconfig", kc, "--context", "member1"}, "web.default names namespace default, -n says other"},
		{[]string{"status", "--kubeconfig", kc, "--context", "member1", "--contexts", "member1,nowhere"}, `context "nowhere"`},
		{[]string{"demo", "sideways"}, "usage: isthmusctl demo up|down"},
	} {
		_, _, err := ctl(bad.args...)
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("isthmusctl %v: %v, want an error containing %q", bad.args, err, bad.want)
		}
	}
}

func mcsClient(t *testing.T, c *cluster.Cluster) mcsclientset.Interface {
	t.Helper()
	m, err := mcsclientset.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func isChecksFailed(err error) bool {
	var failed *checksFailed
	return errors.As(err, &failed)
}
