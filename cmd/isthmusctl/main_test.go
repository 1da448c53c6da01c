package main

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"
	"time"

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
	} {
		var stdout, stderr bytes.Buffer
		err := run(ctx, bad.args, &stdout, &stderr)
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("isthmusctl %s: error %v, want one containing %q", strings.Join(bad.args, " "), err, bad.want)
		}
	}
}
