package main

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/test/cluster"
)

// TestCommands runs the operator's commands the way the README shows them,
// twice each, against a real broker and member, through one kubeconfig with
// a context per cluster.
func TestCommands(t *testing.T) {
	cs := cluster.Start(t, cluster.Options{Broker: true, Members: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	commands := [][]string{
		{"broker", "install", "--kubeconfig", cs.Kubeconfig, "--context", "broker"},
		{"join", "--kubeconfig", cs.Kubeconfig, "--context", "member1", "--broker-context", "broker", "--cluster-id", "east"},
	}
	for round := 1; round <= 2; round++ {
		for _, args := range commands {
			var stdout, stderr bytes.Buffer
			if err := run(ctx, args, &stdout, &stderr); err != nil {
				t.Fatalf("isthmusctl %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
			}
			out := stdout.String()
			t.Logf("round %d: isthmusctl %s\n%s", round, args[0], out)
			for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
				if strings.HasSuffix(line, "created") && round == 2 ||
					strings.Contains(line, " configured") && round == 2 {
					t.Errorf("second run changed something: %s", line)
				}
			}
			if round == 1 && !strings.Contains(out, " created") {
				t.Errorf("first run created nothing:\n%s", out)
			}
		}
	}

	// Joining again with the member's ranges records them in its
	// MemberPolicy on the broker.
	var stdout, stderr bytes.Buffer
	withRanges := slices.Concat(commands[1], []string{"--pod-cidrs", cs.Members[0].PodCIDR.String(), "--service-cidrs", cs.Members[0].ServiceCIDR.String()})
	if err := run(ctx, withRanges, &stdout, &stderr); err != nil {
		t.Fatalf("isthmusctl %s: %v\n%s", strings.Join(withRanges, " "), err, stderr.String())
	}
	if !strings.Contains(stdout.String(), "memberpolicies.broker.isthmus.dev/east configured (broker)") {
		t.Errorf("join with --pod-cidrs did not change the MemberPolicy:\n%s", stdout.String())
	}

	// The record limits: set by flag, kept by a join without it.
	stdout.Reset()
	if err := run(ctx, slices.Concat(commands[1], []string{"--max-exports", "7", "--max-endpoint-slices", "21"}), &stdout, &stderr); err != nil {
		t.Fatalf("join --max-exports: %v\n%s", err, stderr.String())
	}
	stdout.Reset()
	if err := run(ctx, commands[1], &stdout, &stderr); err != nil {
		t.Fatalf("join: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stdout.String(), "memberpolicies.broker.isthmus.dev/east unchanged (broker)") {
		t.Errorf("a join without --max-exports changed the MemberPolicy:\n%s", stdout.String())
	}
	mp, err := dynamic.NewForConfigOrDie(cs.Broker.Config).Resource(brokerv1.MemberPoliciesResource).Namespace(brokerv1.DefaultBrokerNamespace).Get(ctx, "east", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	limits, _, _ := unstructured.NestedMap(mp.Object, "spec", "limits")
	if limits["maxExports"] != int64(7) || limits["maxEndpointSlices"] != int64(21) {
		t.Errorf("MemberPolicy east's limits %v, want maxExports 7 and maxEndpointSlices 21", limits)
	}

	for _, bad := range []struct {
		args []string
		want string
	}{
		{[]string{"frobnicate"}, "unknown command"},
		{[]string{"join", "--kubeconfig", cs.Kubeconfig, "--context", "member1"}, "--broker-context is required"},
		{[]string{"join", "--kubeconfig", cs.Kubeconfig, "--context", "member1", "--broker-context", "nowhere"}, `context "nowhere"`},
		{[]string{"broker", "install", "--kubeconfig", cs.Kubeconfig, "--context", "broker", "extra"}, `unknown command "extra"`},
		{slices.Concat(commands[1], []string{"--pod-cidrs", "10.240.0.0/16"}), "--pod-cidrs and --service-cidrs go together"},
		{slices.Concat(commands[1], []string{"--pod-cidrs", "0.0.0.0/0", "--service-cidrs", "10.96.0.0/16"}), "wider than /8"},
		{slices.Concat(commands[1], []string{"--max-exports", "-1"}), "--max-exports -1: must be 0-100000"},
	} {
		var stdout, stderr bytes.Buffer
		err := run(ctx, bad.args, &stdout, &stderr)
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("isthmusctl %s: error %v, want one containing %q", strings.Join(bad.args, " "), err, bad.want)
		}
	}
}
