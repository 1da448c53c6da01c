// Package buildinfo reads the version and revision Go stamps into every
// binary built from a git checkout (the main module's version from the
// VCS, vcs.revision, vcs.time, vcs.modified), so `isthmus version`, the
// isthmus_build_info metric and the version an agent publishes all say
// the same thing, with no -ldflags to forget.
package buildinfo

import (
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// Info is what a binary knows of its own build.
type Info struct {
	// Version is the main module's version as Go derives it from the VCS
	// (a tag, or a pseudo-version of the commit, "+dirty" when modified).
	Version   string
	Revision  string
	Time      string
	Modified  bool
	GoVersion string
}

// Read returns this binary's build information. A binary built outside a
// checkout (go run of a file, or with -buildvcs=false) says "(devel)".
func Read() Info {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return Info{Version: "(devel)"}
	}
	return fromBuildInfo(bi)
}

func fromBuildInfo(bi *debug.BuildInfo) Info {
	info := Info{Version: bi.Main.Version, GoVersion: bi.GoVersion}
	if info.Version == "" {
		info.Version = "(devel)"
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			info.Revision = s.Value
		case "vcs.time":
			info.Time = s.Value
		case "vcs.modified":
			info.Modified = s.Value == "true"
		}
	}
	return info
}

// Collector is the isthmus_build_info gauge: always 1, labelled with the
// version, revision and Go version, the metric dashboards join on.
func (i Info) Collector() prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "isthmus_build_info",
		Help:        "Always 1; labelled with the version and VCS revision this binary was built from and its Go version.",
		ConstLabels: prometheus.Labels{"version": i.Version, "revision": i.Revision, "goversion": i.GoVersion},
	})
	g.Set(1)
	return g
}
