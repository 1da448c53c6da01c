#!/usr/bin/env bash
# Builds the real Kubernetes parts the tests run, once per machine, into a
# cache outside the checkout keyed by the pinned versions (this module's
# go.mod and go.sum, and the Go version), so a fresh clone on the same
# machine reuses them. Prints the directory holding the binaries.
# With --print it only reports that directory, failing if it is incomplete.
#
# The first build on a machine compiles k8s.io/kubernetes from source:
# about 15-25 minutes on 2 cores. Later runs find the binaries and return at once.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

k8s_version=$(awk '$1=="k8s.io/kubernetes"{print $2; exit}' go.mod)
# Bump recipe when the way the binaries are built changes.
recipe=1
key=$( (cat go.mod go.sum; go version; echo "recipe=$recipe") | sha256sum | cut -c1-16)
cache=${ISTHMUS_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/isthmus/k8s-tools}
dest="$cache/$k8s_version-$key"
bins=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy etcd kwok)
files=("${bins[@]}" kwok-stages.yaml)

complete() {
	for f in "${files[@]}"; do [ -s "$dest/$f" ] || return 1; done
}

if complete; then
	echo "$dest"
	exit 0
fi
if [ "${1:-}" = "--print" ]; then
	echo "no complete build in $dest: run make tools" >&2
	exit 1
fi

minor=${k8s_version#v1.}; minor=${minor%%.*}
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$k8s_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"

mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.build-XXXXXX")
trap 'rm -rf "$tmp"' EXIT

start=$(date +%s)
echo "building Kubernetes $k8s_version test binaries into $dest (first time on this machine: 15-25 min on 2 cores)" >&2
go build -ldflags "$ldflags" -o "$tmp/" \
	k8s.io/kubernetes/cmd/kube-apiserver \
	k8s.io/kubernetes/cmd/kube-controller-manager \
	k8s.io/kubernetes/cmd/kube-scheduler \
	k8s.io/kubernetes/cmd/kube-proxy >&2
go build -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3 >&2
go build -ldflags "-s -w" -o "$tmp/kwok" sigs.k8s.io/kwok/cmd/kwok >&2
go run ./kwokstages >"$tmp/kwok-stages.yaml"
echo "built in $(( $(date +%s) - start )) s" >&2

rm -rf "$dest"
mv "$tmp" "$dest"
trap - EXIT
echo "$dest"
