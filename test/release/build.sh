#!/usr/bin/env bash
# Builds the release artifacts from the tree (make release), all into one
# directory (default bin/release):
#
#   isthmus-linux-amd64, isthmus-linux-arm64        the daemon, static
#   isthmusctl-linux-amd64, isthmusctl-linux-arm64  the CLI, static
#   isthmus-image.tar                               the image index (make image)
#   isthmus-<version>.tgz, isthmus-broker-<version>.tgz   the charts (helm package)
#   SHA256SUMS                                      sha256sum -c reads it
#
# Reproducible from a commit: binaries built with -trimpath carry the VCS
# stamp and no path or time of the build; the image's timestamps are the
# commit's; the charts are packaged by helm, then re-archived with the
# commit's time and fixed owners and modes (helm stamps every file with the
# time of packaging). test/release builds it twice and compares.
#
#   test/release/build.sh [OUT_DIR]
#   ISTHMUS_RELEASE_PLATFORMS="linux/amd64"  only those platforms
#   ISTHMUS_RELEASE_COMMANDS="isthmusctl"    only those binaries (the test;
#                                            test/image builds isthmus twice)
#   ISTHMUS_RELEASE_IMAGE=0                  no image (the test; test/image checks it)
#   ISTHMUS_HELM=/path/to/helm               helm (default bin/helm, then PATH)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
out=${1:-$root/bin/release}
platforms=${ISTHMUS_RELEASE_PLATFORMS:-linux/amd64 linux/arm64}
commands=${ISTHMUS_RELEASE_COMMANDS:-isthmus isthmusctl}
helm=${ISTHMUS_HELM:-}
[ -n "$helm" ] || { [ -x "$root/bin/helm" ] && helm=$root/bin/helm; } || helm=$(command -v helm) || { echo "release: no helm (make helm)" >&2; exit 1; }
epoch=$(git log -1 --format=%ct)

rm -rf "$out"
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/isthmus-release-XXXXXX")
trap 'rm -rf "$work"' EXIT

for p in $platforms; do
	for cmd in $commands; do
		echo "release: $cmd for $p" >&2
		GOOS=${p%/*} GOARCH=${p#*/} CGO_ENABLED=0 go build -trimpath -buildvcs=true -ldflags "-s -w" \
			-o "$out/$cmd-${p%/*}-${p#*/}" "./cmd/$cmd"
	done
	version=$(go version -m "$out/$cmd-${p%/*}-${p#*/}" | awk '$1=="mod"{print $3; exit}')
	case "$version" in ""|"(devel)") echo "release: the binaries carry no VCS version (build from a git checkout)" >&2; exit 1;; esac
done

if [ "${ISTHMUS_RELEASE_IMAGE:-1}" != 0 ]; then
	ISTHMUS_IMAGE_PLATFORMS="$platforms" bash test/image/build.sh "$out/isthmus-image.tar"
fi

for chart in isthmus isthmus-broker; do
	echo "release: chart $chart" >&2
	"$helm" package "charts/$chart" -d "$work/helm" >/dev/null
	tgz=$(basename "$(ls "$work/helm/$chart"-[0-9]*.tgz)")
	mkdir -p "$work/unpacked/$chart"
	tar -xzf "$work/helm/$tgz" -C "$work/unpacked/$chart"
	find "$work/unpacked/$chart" -type d -exec chmod 0755 {} + -o -type f -exec chmod 0644 {} +
	tar -C "$work/unpacked/$chart" --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner --format=ustar -cf - "$chart" |
		gzip -n -9 >"$out/$tgz"
done

(cd "$out" && sha256sum -- * >SHA256SUMS)
echo "release: $(wc -l <"$out/SHA256SUMS") artifacts in $out (version $version)" >&2
