#!/usr/bin/env bash
# make test: every test of the three Go modules with the race detector,
# two packages at a time (the machine's cores).
#
# Not more: the packages that start clustersets of real nodes look idle
# (they wait on pods, rollouts and the conformance suite's windows), but
# each clusterset's apiservers, etcd, kubelets, containerd and pods keep a
# share of a core busy. Run beside each other (four real-node packages and
# two others at once, 2026-12-06) they drove a 2-core machine to a load of
# 90: kubelets missed their start deadline, the conformance suite's 4 s
# execs timed out, and the run took longer than one package after the
# other. Two queues side by side (the real-node packages two at a time,
# the others one at a time beside them) were tried on 2026-12-07: warm CI
# took 14-15 minutes instead of 18-19, but two of four runs failed on
# tests that had passed in the single queue (a suite-image test's
# listener gone without a word; a tunnel test's daemon told its
# DaemonSet was missing, so it removed its device; the demo's client
# answered from the other region first), causes not found, so the queue
# is one again.
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

started=$(date +%s)
# The conformance package first: at about ten minutes it is the longest,
# and go test starts packages in the order they are named, so begun last
# it would run on alone while the other slot idles.
first=./test/conformance
"$go" test -race -count=1 -timeout 60m -p 2 "$first" $("$go" list ./... | grep -vx "github.com/isthmus-dev/isthmus/${first#./}")
main=$(date +%s)
# The other two modules beside each other: one package each holds most of
# their time (CoreDNS with the plugin, the image built twice).
(cd dnsserver/coredns && "$go" test -race -count=1 -timeout 50m ./...) &
coredns=$!
(cd test/image && "$go" test -race -count=1 -timeout 50m ./...) &
image=$!
rc=0
wait "$coredns" || rc=1
wait "$image" || rc=1
[ "$rc" = 0 ] || exit 1
echo "make test: every package passed in $(( $(date +%s) - started )) s (the main module's $(( main - started )) s)"
