// Package release tests `make release` (build.sh beside it): the
// artifacts are built from the tree twice and must be the same bytes, the
// binaries must carry the commit's VCS stamp, and the packaged charts must
// be ones helm reads, at their Chart.yaml version.
package release
