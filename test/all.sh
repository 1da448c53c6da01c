#!/usr/bin/env bash
# make test: every test of the three Go modules with the race detector.
#
# Two queues side by side. The packages that start clustersets of real
# nodes run two at a time; the rest (apiservers without nodes, network
# namespaces, pure code) one at a time beside them, with the CoreDNS
# plugin's and the image's modules after them. The tests mostly wait (on
# pods, rollouts, the conformance suite's 1 s probe windows): one queue of
# two left the 2-core machine 40-70 % busy (a CI run of 2026-12-07 04:00,
# sampled every 10 s) and could not end sooner than half the packages'
# summed time, about 15 minutes. Not more real-node packages at once: each
# clusterset's apiservers, etcd, kubelets, containerd and pods keep a share
# of a core busy, and four of them with two other packages (2026-12-06)
# drove the load to 90: kubelets missed their start deadline and the
# conformance suite's 4 s execs timed out.
#
# Packages side by side must not meet on the host: each harness draws its
# ports from a block no other process holds (test/freeport). Two queues
# first failed two CI runs of four (2026-12-07), among them a tunnel
# test's daemon reading its DaemonSet as missing, a symptom of two
# harnesses sharing an etcd that one of them lost its port to.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
go=${GO:-go}
ISTHMUS_TOOLS_DIR=$(bash test/tools/build.sh)
export ISTHMUS_TOOLS_DIR

# The conformance suite's specs one at a time here (make conformance, alone
# on the machine, runs three at a time): beside another real-node package,
# three at once made the suite's 4 s kubectl execs time out (the dual-stack
# headless A spec, 26 of 27, in the CI run of 2026-12-06 19:00 UTC).
export CONFORMANCE_PROCS=${CONFORMANCE_PROCS:-1}

module=github.com/isthmus-dev/isthmus
# Real nodes, longest first: go test starts packages in the order they
# are named, and the conformance package (about ten minutes) begun last
# would run on alone.
real=(test/conformance cmd/isthmusctl test/install test/demo test/cluster)
rest=$("$go" list ./... | grep -vxF "$(printf "$module/%s\n" "${real[@]}")")

started=$(date +%s)
"$go" test -race -count=1 -timeout 60m -p 2 "${real[@]/#/./}" &
realq=$!
(
	"$go" test -race -count=1 -timeout 60m -p 1 $rest
	cd "$root/dnsserver/coredns" && "$go" test -race -count=1 -timeout 50m ./...
	cd "$root/test/image" && "$go" test -race -count=1 -timeout 50m ./...
) &
restq=$!
rc=0
wait "$restq" || rc=1
rest_took=$(( $(date +%s) - started ))
wait "$realq" || rc=1
[ "$rc" = 0 ] || exit 1
echo "make test: every package passed in $(( $(date +%s) - started )) s (the real-node packages' queue; the other one's $rest_took s)"
