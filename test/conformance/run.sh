#!/usr/bin/env bash
# make conformance: builds mcs-api's conformance suite from the caller's
# checkout of it (never copied into this repository) and runs it against
# member clusters of a running clusterset, filling in who is tested:
# organization, project, the version Go stamps into isthmus from the VCS,
# and the project's URL. report.yaml and report.html are kept under
# bin/conformance/; the run fails unless every spec passed.
#
#   MCS_CONFORMANCE_DIR        the suite's directory (default ../shared/mcs-api-conformance)
#   CONFORMANCE_KUBECONFIG     kubeconfig holding the members' contexts (default $KUBECONFIG)
#   CONFORMANCE_CONTEXTS       comma-separated member contexts, the first the exporting one (required)
#   CONFORMANCE_LABEL_FILTER   a Ginkgo label filter, e.g. '!DNS && !Connectivity' where pods cannot
#                              exec (KWOK); specs it leaves out count as skipped, so such a run is
#                              never a conformance result, and passes when every spec that ran passed
#   CONFORMANCE_OUT            where reports go (default bin/conformance)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
suite=${MCS_CONFORMANCE_DIR:-../shared/mcs-api-conformance}
kubeconfig=${CONFORMANCE_KUBECONFIG:-${KUBECONFIG:-}}
contexts=${CONFORMANCE_CONTEXTS:-}
filter=${CONFORMANCE_LABEL_FILTER:-}
out=${CONFORMANCE_OUT:-$root/bin/conformance}

[ -f "$suite/conformance_suite.go" ] || { echo "conformance: no suite in $suite (set MCS_CONFORMANCE_DIR to a checkout of kubernetes-sigs/mcs-api's conformance/)" >&2; exit 2; }
[ -n "$kubeconfig" ] || { echo "conformance: set CONFORMANCE_KUBECONFIG (or KUBECONFIG)" >&2; exit 2; }
[ -n "$contexts" ] || { echo "conformance: set CONFORMANCE_CONTEXTS to the members' contexts, e.g. member1,member2" >&2; exit 2; }
kubeconfig=$(cd "$(dirname "$kubeconfig")" && pwd)/$(basename "$kubeconfig")
mkdir -p "$out"

echo "conformance: building the suite from $suite" >&2
(cd "$suite" && go test -c -o "$out/mcs-conformance.test" .)
# -buildvcs=true: stamp the commit's version even where GOFLAGS says false.
go build -buildvcs=true -o "$out/isthmus" ./cmd/isthmus
version=$(go version -m "$out/isthmus" | awk '$1=="mod"{print $3; exit}')
case "$version" in ""|"(devel)") echo "conformance: isthmus carries no VCS version (run from a git checkout)" >&2; exit 2;; esac

args=(-kubeconfig "$kubeconfig" -contexts "$contexts"
	-organization isthmus-dev -project isthmus -version "$version" -url https://github.com/isthmus-dev/isthmus
	-ginkgo.v -ginkgo.no-color)
[ -z "$filter" ] || args+=(-ginkgo.label-filter "$filter")
rm -f "$out/report.yaml" "$out/report.html"
start=$(date +%s)
echo "conformance: running against $contexts (version $version${filter:+, label filter '$filter'})" >&2
rc=0
(cd "$out" && ./mcs-conformance.test "${args[@]}") >"$out/suite.log" 2>&1 || rc=$?
elapsed=$(( $(date +%s) - start ))
[ -f "$out/report.yaml" ] || { tail -50 "$out/suite.log" >&2; echo "conformance: the suite wrote no report (exit $rc); log in $out/suite.log" >&2; exit 1; }

# The report lists every spec once, under Required or Optional, with
# passed/failed/skipped/conformant; the suite's own exit code says whether
# every spec that ran passed.
read -r total passed failed skipped nonconformant < <(awk '
	/^ *- desc:/ { n++ }
	/^ *passed: true$/ { p++ }
	/^ *failed: true$/ { f++ }
	/^ *skipped: true$/ { s++ }
	/^ *conformant: false$/ { c++ }
	END { printf "%d %d %d %d %d\n", n, p, f, s, c }' "$out/report.yaml")
echo "conformance: $passed of $total specs passed, $failed failed, $nonconformant non-conformant, $skipped skipped, in $elapsed s" >&2
echo "conformance: reports in $out/report.yaml and $out/report.html, the suite's log in $out/suite.log" >&2
# An empty suitefailure ("") is the report's way of saying none.
grep -E '^ *suitefailure: +[^" ]|^ *suitefailure: +"[^"]' "$out/report.yaml" >&2 && exit 1
if [ "$rc" -ne 0 ] || [ "$failed" -ne 0 ] || [ "$nonconformant" -ne 0 ]; then
	awk '/^ *- desc:/ { d=$0 } /^ *passed: false$/ { print d }' "$out/report.yaml" >&2
	exit 1
fi
if [ "$passed" -ne "$total" ]; then
	if [ -z "$filter" ]; then
		echo "conformance: $skipped specs were skipped: not every spec passed" >&2
		exit 1
	fi
	echo "conformance: every spec that ran passed; the label filter left $skipped out, so this is not a conformance result" >&2
fi
