package buildinfo

import (
	"runtime/debug"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestFromBuildInfo(t *testing.T) {
	bi := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "github.com/isthmus-dev/isthmus", Version: "v0.0.0-20261206010000-8dc379a1b2c3+dirty"},
		Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "8dc379a1b2c3"}, {Key: "vcs.time", Value: "2026-12-06T01:00:00Z"}, {Key: "vcs.modified", Value: "true"}}}
	got := fromBuildInfo(bi)
	want := Info{Version: "v0.0.0-20261206010000-8dc379a1b2c3+dirty", Revision: "8dc379a1b2c3", Time: "2026-12-06T01:00:00Z", Modified: true, GoVersion: "go1.26.8"}
	if got != want {
		t.Errorf("fromBuildInfo = %+v; want %+v", got, want)
	}
	if v := fromBuildInfo(&debug.BuildInfo{}).Version; v != "(devel)" {
		t.Errorf("a build without a version says %q; want (devel)", v)
	}
}

func TestCollector(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(Info{Version: "v1.2.3", Revision: "abc", GoVersion: "go1.26.8"}.Collector())
	want := `
# HELP isthmus_build_info Always 1; labelled with the version and VCS revision this binary was built from and its Go version.
# TYPE isthmus_build_info gauge
isthmus_build_info{goversion="go1.26.8",revision="abc",version="v1.2.3"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "isthmus_build_info"); err != nil {
		t.Error(err)
	}
}
