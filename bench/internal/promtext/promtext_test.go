package promtext

import (
	"strings"
	"testing"
)

const page = `# HELP apiserver_request_total Counter of apiserver requests.
# TYPE apiserver_request_total counter
apiserver_request_total{code="201",resource="configmaps",verb="POST"} 7
apiserver_request_total{code="409",resource="configmaps",verb="PUT"} 2
# HELP apiserver_request_duration_seconds Response latency.
# TYPE apiserver_request_duration_seconds histogram
apiserver_request_duration_seconds_bucket{resource="configmaps",verb="POST",le="0.005"} 5
apiserver_request_duration_seconds_bucket{resource="configmaps",verb="POST",le="+Inf"} 7
apiserver_request_duration_seconds_sum{resource="configmaps",verb="POST"} 0.021
apiserver_request_duration_seconds_count{resource="configmaps",verb="POST"} 7
# TYPE apiserver_request_total_extra counter
apiserver_request_total_extra 3
# TYPE go_goroutines gauge
go_goroutines 310
`

func TestKeep(t *testing.T) {
	for _, tc := range []struct {
		only []string
		want map[string]int // family -> samples
	}{
		{[]string{"apiserver_request_total"}, map[string]int{"apiserver_request_total": 2}},
		{[]string{"apiserver_request_duration_seconds"}, map[string]int{"apiserver_request_duration_seconds": 1}},
		{[]string{"apiserver_request_total", "go_goroutines"}, map[string]int{"apiserver_request_total": 2, "go_goroutines": 1}},
		{[]string{"absent"}, map[string]int{}},
	} {
		kept := keep(page, tc.only)
		if strings.Contains(kept, "_bucket") || strings.Contains(kept, "# HELP") {
			t.Errorf("keep(%v) kept buckets or help text:\n%s", tc.only, kept)
		}
		fams, err := Parse(strings.NewReader(kept))
		if err != nil {
			t.Fatalf("keep(%v): the kept text does not parse: %v\n%s", tc.only, err, kept)
		}
		if len(fams) != len(tc.want) {
			t.Errorf("keep(%v) kept families %v, want %v", tc.only, keys(fams), tc.want)
		}
		for name, n := range tc.want {
			f := fams[name]
			if f == nil || len(f.GetMetric()) != n {
				t.Errorf("keep(%v): family %s has %d samples, want %d", tc.only, name, len(f.GetMetric()), n)
			}
		}
	}
	// A histogram without its buckets still has its sum and count.
	fams, _ := Parse(strings.NewReader(keep(page, []string{"apiserver_request_duration_seconds"})))
	h := fams["apiserver_request_duration_seconds"].GetMetric()[0].GetHistogram()
	if h.GetSampleCount() != 7 || h.GetSampleSum() != 0.021 {
		t.Errorf("histogram kept as count %d, sum %v; want 7, 0.021", h.GetSampleCount(), h.GetSampleSum())
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
