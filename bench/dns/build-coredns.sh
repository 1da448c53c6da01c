#!/usr/bin/env bash
# Builds the anchor, stock CoreDNS v1.15.0 (its in-tree kubernetes plugin has
# the `multicluster` option), once per machine, from the Go module proxy with
# CoreDNS's own go.mod, and prints the directory holding the binary. The
# build takes ~12 minutes on two cores, so it is niced and kept out of
# `make test`. --print only prints the directory when the build exists.
set -euo pipefail
version=v1.15.0
dir="${XDG_CACHE_HOME:-$HOME/.cache}/isthmus/coredns-$version"
if [[ -x "$dir/coredns" ]]; then
	echo "$dir"
	exit 0
fi
if [[ "${1:-}" == "--print" ]]; then
	echo "CoreDNS $version not built: run bench/dns/build-coredns.sh" >&2
	exit 1
fi
mkdir -p "$dir"
# One compile at a time, niced: the machine is shared.
GOBIN="$dir" GOFLAGS=-p=1 GOMAXPROCS=1 nice -n 19 go install "github.com/coredns/coredns@$version" >&2
echo "$dir"
