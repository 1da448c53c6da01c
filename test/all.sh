#!/usr/bin/env bash
# make test: every test of the three modules, with the race detector, in
# two streams that run side by side:
#
#   real nodes  the packages that start clustersets of real kubelets and
#               pods (the conformance suite, the demo, the install and
#               upgrade, isthmusctl verify). They spend most of their time
#               waiting: on pods, rollouts, failover timers and the
#               suite's own Eventually and Consistently windows. Four run
#               at once, from the start.
#   the rest    unit and apiserver-backed tests, mostly CPU: two at a time
#               (the machine's cores), then the CoreDNS plugin's and the
#               image tools' modules.
#
# Run one after the other, the waiting packages came last in import-path
# order and two at a time, so the run ended with ten minutes of mostly
# idle cores. Each line of output carries its stream's name; the run fails
# if either stream does, and says which.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
go=${GO:-go}
ISTHMUS_TOOLS_DIR=$(bash test/tools/build.sh)
export ISTHMUS_TOOLS_DIR

real_nodes=(./test/conformance ./test/demo ./test/install ./cmd/isthmusctl)
mapfile -t real_pkgs < <("$go" list "${real_nodes[@]}")
mapfile -t rest < <("$go" list ./... | grep -vxF -f <(printf '%s\n' "${real_pkgs[@]}"))

stream() {
	local name=$1
	shift
	# pipefail: the stream's status is its commands', not sed's.
	( set -o pipefail; "$@" 2>&1 | sed -u "s/^/[$name] /" )
}

started=$(date +%s)
stream "real nodes" "$go" test -race -count=1 -timeout 50m -p 4 "${real_pkgs[@]}" &
real_pid=$!
stream "rest" bash -c '
	set -euo pipefail
	'"$go"' test -race -count=1 -timeout 50m -p 2 "$@"
	(cd dnsserver/coredns && '"$go"' test -race -count=1 -timeout 50m ./...)
	(cd test/image && '"$go"' test -race -count=1 -timeout 50m ./...)' bash "${rest[@]}" &
rest_pid=$!

failed=()
wait "$real_pid" || failed+=("real nodes")
wait "$rest_pid" || failed+=("rest")
took=$(( $(date +%s) - started ))
if [ ${#failed[@]} -gt 0 ]; then
	echo "make test: FAILED in ${took} s: ${failed[*]} (search the output for '--- FAIL' and 'FAIL	')" >&2
	exit 1
fi
echo "make test: every package passed in ${took} s"
