#!/usr/bin/env bash
# Builds the isthmus image from the tree (make image): a static isthmus
# binary per platform, then one OCI index of both, written as an OCI layout
# archive. Version and revision come from the VCS stamp Go writes into the
# binary; every timestamp is the commit's, so a commit gives one digest.
#
#   test/image/build.sh OUT.tar     (default bin/isthmus-image.tar)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
out=${1:-$root/bin/isthmus-image.tar}
platforms=${ISTHMUS_IMAGE_PLATFORMS:-linux/amd64 linux/arm64}
mkdir -p "$(dirname "$out")" "$root/bin"
work=$(mktemp -d "$root/bin/.image-build-XXXXXX")
trap 'rm -rf "$work"' EXIT

args=()
n=0; total=$(wc -w <<<"$platforms")
for p in $platforms; do
	n=$((n + 1))
	start=$(date +%s)
	echo "image: [$n/$total] building isthmus for $p (static, -trimpath; first time per platform ~3-5 min on 2 cores)" >&2
	GOOS=${p%/*} GOARCH=${p#*/} CGO_ENABLED=0 go build -trimpath -buildvcs=true -ldflags "-s -w" \
		-o "$work/${p/\//_}/isthmus" ./cmd/isthmus
	echo "image: [$n/$total] $p built in $(( $(date +%s) - start )) s" >&2
	args+=(-bin "$p=$work/${p/\//_}/isthmus")
done

first=${platforms%% *}
version=$(go version -m "$work/${first/\//_}/isthmus" | awk '$1=="mod"{print $3; exit}')
revision=$(git rev-parse HEAD)
created=$(TZ=UTC git log -1 --format=%cd --date=format-local:%Y-%m-%dT%H:%M:%SZ)
app=$(awk '$1=="appVersion:"{gsub(/"/,"",$2); print $2}' charts/isthmus/Chart.yaml)
case "$version" in ""|"(devel)") echo "image: the binary carries no VCS version (build from a git checkout)" >&2; exit 1;; esac

echo "image: [$total/$total] writing the OCI index ($version, chart appVersion $app) to $out" >&2
(cd test/image && go run . "${args[@]}" -tag "$app" -tag "${version//+/-}" -created "$created" \
	-label "org.opencontainers.image.version=$version" \
	-label "org.opencontainers.image.revision=$revision" \
	-label "org.opencontainers.image.source=https://github.com/isthmus-dev/isthmus" \
	-label "org.opencontainers.image.created=$created" \
	-out "$out")
