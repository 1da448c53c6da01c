#!/usr/bin/env bash
# Builds the real Kubernetes parts the tests run, once per machine, into a
# cache outside the checkout keyed by the pinned versions (this module's
# go.mod and go.sum, and the Go version), so a fresh clone on the same
# machine reuses them. Prints the directory holding the binaries.
# With --print it only reports that directory, failing if it is incomplete.
#
# Each binary is built only when it is missing from that directory, so a
# cache made before a binary joined the list (the kubelet, say) gets just
# that binary, not a rebuild of all. Progress goes to stderr, one line per
# binary with how many are done.
#
# The first build on a machine compiles k8s.io/kubernetes from source:
# about 15-25 minutes on 2 cores. Later runs find the binaries and return at once.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

k8s_version=$(awk '$1=="k8s.io/kubernetes"{print $2; exit}' go.mod)
# Bump recipe when the way the binaries are built changes (not when one is
# added: a missing binary is built into the existing directory).
recipe=1
key=$( (cat go.mod go.sum; go version; echo "recipe=$recipe") | sha256sum | cut -c1-16)
cache=${ISTHMUS_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/isthmus/k8s-tools}
dest="$cache/$k8s_version-$key"

minor=${k8s_version#v1.}; minor=${minor%%.*}
k8s_ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$k8s_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"

# name, package, ldflags: in build order, the apiserver first because the
# others share most of its packages.
targets=(
	"kube-apiserver|k8s.io/kubernetes/cmd/kube-apiserver|$k8s_ldflags"
	"kube-controller-manager|k8s.io/kubernetes/cmd/kube-controller-manager|$k8s_ldflags"
	"kube-scheduler|k8s.io/kubernetes/cmd/kube-scheduler|$k8s_ldflags"
	"kube-proxy|k8s.io/kubernetes/cmd/kube-proxy|$k8s_ldflags"
	"kubelet|k8s.io/kubernetes/cmd/kubelet|$k8s_ldflags"
	"etcd|go.etcd.io/etcd/server/v3|-s -w"
	"kwok|sigs.k8s.io/kwok/cmd/kwok|-s -w"
)

missing=()
for t in "${targets[@]}"; do
	[ -s "$dest/${t%%|*}" ] || missing+=("$t")
done
stages_missing=false
[ -s "$dest/kwok-stages.yaml" ] || stages_missing=true

if [ ${#missing[@]} -eq 0 ] && ! $stages_missing; then
	echo "$dest"
	exit 0
fi
if [ "${1:-}" = "--print" ]; then
	names=(); for t in "${missing[@]}"; do names+=("${t%%|*}"); done
	$stages_missing && names+=(kwok-stages.yaml)
	echo "no complete build in $dest (missing: ${names[*]}): run make tools" >&2
	exit 1
fi

mkdir -p "$dest"
tmp=$(mktemp -d "$cache/.build-XXXXXX")
trap 'rm -rf "$tmp"' EXIT

total=${#missing[@]}
if [ "$total" -ge 4 ]; then
	echo "tools: building Kubernetes $k8s_version test binaries into $dest (first time on this machine: 15-25 min on 2 cores)" >&2
else
	echo "tools: $dest lacks $total binaries; building only those" >&2
fi
start=$(date +%s)
n=0
for t in "${missing[@]}"; do
	n=$((n + 1))
	IFS='|' read -r name pkg flags <<<"$t"
	began=$(date +%s)
	echo "tools: [$n/$total] building $name ($pkg), $(( began - start )) s so far" >&2
	go build -ldflags "$flags" -o "$tmp/$name" "$pkg" >&2
	# One rename per binary: a concurrent build of the same cache sees
	# either nothing or a whole file.
	mv "$tmp/$name" "$dest/$name"
	echo "tools: [$n/$total] $name built in $(( $(date +%s) - began )) s" >&2
done
if $stages_missing; then
	go run ./kwokstages >"$tmp/kwok-stages.yaml"
	mv "$tmp/kwok-stages.yaml" "$dest/kwok-stages.yaml"
fi
echo "tools: done in $(( $(date +%s) - start )) s" >&2
echo "$dest"
