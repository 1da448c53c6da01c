// Package promtext reads the Prometheus text the benchmarks scrape: a
// kube-apiserver's /metrics through its client, or a component's /metrics
// page, and tells an apiserver's write requests by verb and resource.
package promtext

import (
	"context"
	"fmt"
	"io"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"k8s.io/client-go/rest"
)

// Parse reads a page of Prometheus text into its metric families.
func Parse(r io.Reader) (map[string]*dto.MetricFamily, error) {
	parser := expfmt.NewTextParser(model.UTF8Validation)
	return parser.TextToMetricFamilies(r)
}

// APIServer reads a kube-apiserver's /metrics through its REST client:
// only the families named, when any are (with their sums and counts but
// not a histogram's buckets). A whole page is megabytes of text; a bench
// that reads it between samples would otherwise spend more CPU parsing
// than the samples cost.
func APIServer(ctx context.Context, c rest.Interface, only ...string) (map[string]*dto.MetricFamily, error) {
	raw, err := c.Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil, err
	}
	text := string(raw)
	if len(only) > 0 {
		text = keep(text, only)
	}
	fams, err := Parse(strings.NewReader(text))
	if err != nil {
		return nil, fmt.Errorf("parsing an apiserver's metrics: %w", err)
	}
	return fams, nil
}

// keep is the lines of a metrics page that belong to the named families:
// their TYPE lines and their samples, a histogram's _sum and _count but
// not its _bucket lines.
func keep(page string, names []string) string {
	want := map[string]bool{}
	for _, n := range names {
		want[n], want[n+"_sum"], want[n+"_count"] = true, true, true
	}
	var b strings.Builder
	for line := range strings.Lines(page) {
		name := line
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			name = rest
		} else if strings.HasPrefix(line, "#") {
			continue
		}
		if i := strings.IndexAny(name, "{ "); i >= 0 && want[name[:i]] {
			b.WriteString(line)
		}
	}
	return b.String()
}

var writeVerbs = map[string]bool{"POST": true, "PUT": true, "PATCH": true, "DELETE": true, "APPLY": true, "DELETECOLLECTION": true}

// Write reports whether a sample of an apiserver request metric
// (apiserver_request_total, apiserver_request_duration_seconds) counts
// writes, with its verb and its resource ("clusters/status" for a
// subresource).
func Write(m *dto.Metric) (verb, resource string, ok bool) {
	var sub string
	for _, l := range m.GetLabel() {
		switch l.GetName() {
		case "verb":
			verb = l.GetValue()
		case "resource":
			resource = l.GetValue()
		case "subresource":
			sub = l.GetValue()
		}
	}
	if sub != "" {
		resource += "/" + sub
	}
	return verb, resource, writeVerbs[verb]
}

// Label is the value of a sample's label name, "" when it has none.
func Label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}
