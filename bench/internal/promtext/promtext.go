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

// APIServer reads a kube-apiserver's /metrics through its REST client.
func APIServer(ctx context.Context, c rest.Interface) (map[string]*dto.MetricFamily, error) {
	raw, err := c.Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil, err
	}
	fams, err := Parse(strings.NewReader(string(raw)))
	if err != nil {
		return nil, fmt.Errorf("parsing an apiserver's metrics: %w", err)
	}
	return fams, nil
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
