package main

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/isthmus-dev/isthmus/bench/internal/promtext"
	"github.com/isthmus-dev/isthmus/test/cluster"
)

// The apiservers' side of each measurement: the writes each apiserver
// served while it ran, by verb and resource, and the mean time the
// apiserver took per write (apiserver_request_duration_seconds: decoding,
// authentication, authorization, admission, the field manager, etcd). It
// tells the cost of the agents' server-side applies of CRD objects through
// the broker's admission from the floor's plain creates, and how many
// writes each path costs.

// server is one apiserver's write counts and seconds so far, by
// "VERB resource".
type server struct {
	count, sec map[string]float64
	// failed counts the writes answered with an error (a 409 conflict
	// from a stale cache, mostly): each is a write the path paid for.
	failed map[string]float64
}

type servers map[string]server // by cluster name

func readServers(ctx context.Context, cs *cluster.Clusterset) (servers, error) {
	out := servers{}
	for _, c := range []struct {
		name string
		cl   *cluster.Cluster
	}{{"broker", cs.Broker}, {"a", cs.Members[0]}, {"b", cs.Members[1]}} {
		fams, err := promtext.APIServer(ctx, c.cl.Client.Discovery().RESTClient(), "apiserver_request_duration_seconds", "apiserver_request_total")
		if err != nil {
			return nil, fmt.Errorf("reading %s's apiserver metrics: %w", c.name, err)
		}
		s := server{count: map[string]float64{}, sec: map[string]float64{}, failed: map[string]float64{}}
		if f := fams["apiserver_request_duration_seconds"]; f != nil {
			for _, m := range f.GetMetric() {
				verb, res, write := promtext.Write(m)
				if !write {
					continue
				}
				k := verb + " " + res
				s.count[k] += float64(m.GetHistogram().GetSampleCount())
				s.sec[k] += m.GetHistogram().GetSampleSum()
			}
		}
		if f := fams["apiserver_request_total"]; f != nil {
			for _, m := range f.GetMetric() {
				verb, res, write := promtext.Write(m)
				if write && !strings.HasPrefix(promtext.Label(m, "code"), "2") {
					s.failed[verb+" "+res] += m.GetCounter().GetValue()
				}
			}
		}
		out[c.name] = s
	}
	return out, nil
}

func (s servers) sub(o servers) servers { return s.combine(o, -1) }
func (s servers) add(o servers) servers { return s.combine(o, 1) }

// combine is s + sign × o, apiserver by apiserver and key by key.
func (s servers) combine(o servers, sign float64) servers {
	out := servers{}
	for _, c := range []servers{s, o} {
		for name := range c {
			if _, done := out[name]; !done {
				out[name] = server{count: map[string]float64{}, sec: map[string]float64{}, failed: map[string]float64{}}
			}
		}
	}
	for name, r := range out {
		for _, m := range []struct {
			into     map[string]float64
			from, by map[string]float64
		}{{r.count, s[name].count, o[name].count}, {r.sec, s[name].sec, o[name].sec}, {r.failed, s[name].failed, o[name].failed}} {
			for k, v := range m.from {
				m.into[k] += v
			}
			for k, v := range m.by {
				m.into[k] += sign * v
			}
		}
	}
	return out
}

// printServers prints, per path, the writes each apiserver served per
// sample and their mean server time.
func printServers(paths []*path) {
	fmt.Printf("\n| apiserver writes per sample | apiserver: VERB resource × per sample, mean server time |\n|---|---|\n")
	for _, p := range paths {
		samples := float64(len(p.h.total))
		var parts []string
		for _, c := range []string{"broker", "a", "b"} {
			s := p.use.servers[c]
			var keys []string
			for k, n := range s.count {
				if n > 0 {
					keys = append(keys, k)
				}
			}
			slices.Sort(keys)
			for _, k := range keys {
				n := s.count[k]
				// Background writes (Leases, Events) show as fractions.
				part := fmt.Sprintf("%s: %s × %.2f, %.2f ms", c, k, n/samples, 1000*s.sec[k]/n)
				if f := s.failed[k]; f > 0 {
					part += fmt.Sprintf(" (%.2f failed)", f/samples)
				}
				parts = append(parts, part)
			}
		}
		fmt.Printf("| %s | %s |\n", p.name, strings.Join(parts, "; "))
	}
}
