#!/usr/bin/env bash
# make conformance: builds mcs-api's conformance suite from the caller's
# checkout of it (never copied into this repository) and runs it against
# member clusters of a running clusterset, filling in who is tested:
# organization, project, the version Go stamps into isthmus from the VCS,
# and the project's URL. report.yaml and report.html are kept under
# bin/conformance/; the run fails unless every spec passed.
#
# The specs run in parallel under the Ginkgo CLI (--procs): each spec works
# in a random namespace of its own and spends most of its time waiting (a
# connectivity or DNS step is ten passing 1 s probes in a row around a 4 s
# kubectl exec), and the suite's ReportAfterSuite gets every process's
# specs on process 1, so the report is the same as a serial run's. The CLI
# is built from the Go module proxy at the Ginkgo version the suite's
# go.mod requires (a CLI of another version may not speak to the suite's
# processes) and kept as bin/ginkgo-<version>. Three at once, not more:
# the probes' execs are CPU on every side (apiserver, kubelet, containerd,
# runc), so on 2 cores (2026-12-06) the IPv4 suite took 207 s with 3
# processes and 221 s with 5, against about 300 s one spec at a time.
#
#   MCS_CONFORMANCE_DIR        the suite's directory (default ../shared/mcs-api-conformance)
#   CONFORMANCE_KUBECONFIG     kubeconfig holding the members' contexts (default $KUBECONFIG)
#   CONFORMANCE_CONTEXTS       comma-separated member contexts, the first the exporting one (required)
#   CONFORMANCE_LABEL_FILTER   a Ginkgo label filter, e.g. '!DNS && !Connectivity' where pods cannot
#                              exec (KWOK); specs it leaves out count as skipped, so such a run is
#                              never a conformance result, and passes when every spec that ran passed
#   CONFORMANCE_OUT            where reports go (default bin/conformance)
#   CONFORMANCE_PROCS          specs run at once (default 3; 1 runs them one after the other)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
suite=${MCS_CONFORMANCE_DIR:-../shared/mcs-api-conformance}
kubeconfig=${CONFORMANCE_KUBECONFIG:-${KUBECONFIG:-}}
contexts=${CONFORMANCE_CONTEXTS:-}
filter=${CONFORMANCE_LABEL_FILTER:-}
out=${CONFORMANCE_OUT:-$root/bin/conformance}
procs=${CONFORMANCE_PROCS:-3}

[ -f "$suite/conformance_suite.go" ] || { echo "conformance: no suite in $suite (set MCS_CONFORMANCE_DIR to a checkout of kubernetes-sigs/mcs-api's conformance/)" >&2; exit 2; }
[ -n "$kubeconfig" ] || { echo "conformance: set CONFORMANCE_KUBECONFIG (or KUBECONFIG)" >&2; exit 2; }
[ -n "$contexts" ] || { echo "conformance: set CONFORMANCE_CONTEXTS to the members' contexts, e.g. member1,member2" >&2; exit 2; }
[[ "$procs" =~ ^[1-9][0-9]*$ ]] || { echo "conformance: CONFORMANCE_PROCS must be a positive number, not '$procs'" >&2; exit 2; }
kubeconfig=$(cd "$(dirname "$kubeconfig")" && pwd)/$(basename "$kubeconfig")
mkdir -p "$out"

echo "conformance: building the suite from $suite" >&2
(cd "$suite" && go test -c -o "$out/mcs-conformance.test" .)
# The suite's own go.mod says which Ginkgo it runs on (read, never written:
# go list -m only loads it).
ginkgo_version=$(cd "$suite" && go list -m -f '{{if .Replace}}{{.Replace.Version}}{{else}}{{.Version}}{{end}}' github.com/onsi/ginkgo/v2)
[[ "$ginkgo_version" =~ ^v2\.[0-9]+\.[0-9]+$ ]] || { echo "conformance: the suite's go.mod names no released Ginkgo v2 ('$ginkgo_version')" >&2; exit 2; }
ginkgo=$root/bin/ginkgo-$ginkgo_version
if [ ! -x "$ginkgo" ]; then
	echo "conformance: building the Ginkgo CLI $ginkgo_version" >&2
	# Built aside and renamed into place: two runs at once (say make
	# conformance-against beside make conformance) may both build it.
	mkdir -p "$root/bin"
	gobin=$(mktemp -d "$root/bin/.ginkgo.XXXXXX")
	GOBIN=$gobin go install "github.com/onsi/ginkgo/v2/ginkgo@$ginkgo_version"
	mv -f "$gobin/ginkgo" "$ginkgo"
	rmdir "$gobin"
fi
cli_version=$("$ginkgo" version)
[ "$cli_version" = "Ginkgo Version ${ginkgo_version#v}" ] || { echo "conformance: $ginkgo says '$cli_version', the suite needs $ginkgo_version" >&2; exit 2; }
# -buildvcs=true: stamp the commit's version even where GOFLAGS says false.
go build -buildvcs=true -o "$out/isthmus" ./cmd/isthmus
version=$(go version -m "$out/isthmus" | awk '$1=="mod"{print $3; exit}')
case "$version" in ""|"(devel)") echo "conformance: isthmus carries no VCS version (run from a git checkout)" >&2; exit 2;; esac

# The CLI's own flags, then the compiled suite, then (after --) the
# suite's flags, passed to every process.
args=(run --procs "$procs" -v --no-color)
[ -z "$filter" ] || args+=(--label-filter "$filter")
args+=(./mcs-conformance.test -- -kubeconfig "$kubeconfig" -contexts "$contexts"
	-organization isthmus-dev -project isthmus -version "$version" -url https://github.com/isthmus-dev/isthmus)
rm -f "$out/report.yaml" "$out/report.html"
start=$(date +%s)
echo "conformance: running against $contexts, $procs specs at once (version $version${filter:+, label filter '$filter'})" >&2
rc=0
(cd "$out" && "$ginkgo" "${args[@]}") >"$out/suite.log" 2>&1 || rc=$?
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
echo "conformance: $passed of $total specs passed, $failed failed, $nonconformant non-conformant, $skipped skipped, in $elapsed s ($procs at once)" >&2
echo "conformance: reports in $out/report.yaml and $out/report.html, the suite's log in $out/suite.log" >&2
# An empty suitefailure ("") is the report's way of saying none.
grep -E '^ *suitefailure: +[^" ]|^ *suitefailure: +"[^"]' "$out/report.yaml" >&2 && exit 1
[ "$total" -gt 0 ] || { echo "conformance: the report lists no specs" >&2; exit 1; }
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
