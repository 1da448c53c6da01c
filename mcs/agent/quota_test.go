package agent

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// quotaOp is one change to a cluster's ranking: an export put with its
// claimed time (minutes after t0), deleted, or the cluster's join time set.
type quotaOp struct {
	put, del string // namespace/name
	at       int    // put: claimed minute; join: the join minute (-1: no record)
	join     bool
}

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func minute(m int) time.Time {
	if m < 0 {
		return time.Time{}
	}
	return t0.Add(time.Duration(m) * time.Minute)
}

func (q *clusterQuota) apply(op quotaOp) []flip {
	switch {
	case op.join:
		return q.setJoined(minute(op.at))
	case op.del != "":
		return q.delete(op.del)
	default:
		ns, name, _ := strings.Cut(op.put, "/")
		return q.put(ns, name, minute(op.at))
	}
}

func (q *clusterQuota) inCapKeys() []string {
	var out []string
	for k, e := range q.entries {
		if e.taken {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// TestQuota pins the ranking by data: which exports a cluster gets
// imported, and which changes of standing each step reports (the keys the
// agent queues).
func TestQuota(t *testing.T) {
	p := func(key string, at int) quotaOp { return quotaOp{put: key, at: at} }
	d := func(key string) quotaOp { return quotaOp{del: key} }
	j := func(at int) quotaOp { return quotaOp{join: true, at: at} }
	for _, c := range []struct {
		name      string
		max       int
		ops       []quotaOp
		want      []string // taken, sorted
		wantFlips []flip   // of the last op
	}{
		{name: "under the cap every export is taken", max: 3,
			ops:  []quotaOp{p("a/x", 5), p("a/y", 1)},
			want: []string{"a/x", "a/y"}, wantFlips: []flip{{"a/y", unranked, inCap}}},
		{name: "the oldest are taken, a newer one is left out", max: 2,
			ops:  []quotaOp{p("a/one", 1), p("a/two", 2), p("a/three", 3)},
			want: []string{"a/one", "a/two"}, wantFlips: []flip{{"a/three", unranked, overCap}}},
		{name: "an older newcomer pushes out the newest taken", max: 2,
			ops:  []quotaOp{p("a/one", 1), p("a/two", 2), p("a/zero", 0)},
			want: []string{"a/one", "a/zero"}, wantFlips: []flip{{"a/two", inCap, overCap}, {"a/zero", unranked, inCap}}},
		{name: "ties go by namespace, then name", max: 2,
			ops:  []quotaOp{p("b/a", 1), p("a/z", 1), p("a/y", 1)},
			want: []string{"a/y", "a/z"}, wantFlips: []flip{{"a/y", unranked, inCap}, {"b/a", inCap, overCap}}},
		{name: "deleting a taken export brings the next in rank in", max: 2,
			ops:  []quotaOp{p("a/one", 1), p("a/two", 2), p("a/four", 4), p("a/three", 3), d("a/one")},
			want: []string{"a/three", "a/two"}, wantFlips: []flip{{"a/one", inCap, unranked}, {"a/three", overCap, inCap}}},
		{name: "deleting a left-out export moves no one", max: 1,
			ops:  []quotaOp{p("a/one", 1), p("a/two", 2), d("a/two")},
			want: []string{"a/one"}, wantFlips: []flip{{"a/two", overCap, unranked}}},
		{name: "deleting what is not there changes nothing", max: 1,
			ops:  []quotaOp{p("a/one", 1), d("a/two")},
			want: []string{"a/one"}},
		{name: "an unchanged claim changes nothing", max: 1,
			ops:  []quotaOp{p("a/one", 1), p("a/two", 2), p("a/two", 2)},
			want: []string{"a/one"}},
		{name: "claiming an older time re-ranks", max: 1,
			ops:  []quotaOp{p("a/one", 1), p("a/two", 2), p("a/two", 0)},
			want: []string{"a/two"}, wantFlips: []flip{{"a/one", inCap, overCap}, {"a/two", overCap, inCap}}},
		{name: "a claim from before joining counts as the join time", max: 1,
			ops: []quotaOp{j(10), p("a/b", 10), p("z/early", 0)},
			// z/early counts as minute 10 and loses the tie to a/b by
			// namespace: a member cannot buy its way in with 1970.
			want: []string{"a/b"}, wantFlips: []flip{{"z/early", unranked, overCap}}},
		{name: "a new join time re-ranks every export", max: 1,
			ops:  []quotaOp{p("z/early", 0), p("a/late", 5), j(10)},
			want: []string{"a/late"}, wantFlips: []flip{{"a/late", overCap, inCap}, {"z/early", inCap, overCap}}},
		{name: "the record going leaves claims as they are", max: 1,
			ops:  []quotaOp{j(10), p("z/early", 0), p("a/late", 5), j(-1)},
			want: []string{"z/early"}, wantFlips: []flip{{"a/late", inCap, overCap}, {"z/early", overCap, inCap}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			q := newClusterQuota(c.max)
			var last []flip
			for _, op := range c.ops {
				last = q.apply(op)
			}
			if got := q.inCapKeys(); !slices.Equal(got, c.want) {
				t.Errorf("taken %v, want %v", got, c.want)
			}
			if !slices.Equal(last, c.wantFlips) {
				t.Errorf("flips %v, want %v", last, c.wantFlips)
			}
			checkQuota(t, q)
		})
	}
}

func TestOldestLeftOut(t *testing.T) {
	q := newClusterQuota(1)
	for _, k := range []string{"a/0", "a/5", "a/3", "a/1", "a/4", "a/2"} {
		q.put("a", k[2:], minute(int(k[2]-'0')))
	}
	if got, want := q.oldestLeftOut(3), []string{"a/1", "a/2", "a/3"}; !slices.Equal(got, want) {
		t.Errorf("oldestLeftOut(3) = %v, want %v", got, want)
	}
	if got, want := q.oldestLeftOut(9), []string{"a/1", "a/2", "a/3", "a/4", "a/5"}; !slices.Equal(got, want) {
		t.Errorf("oldestLeftOut(9) = %v, want %v", got, want)
	}
}

// checkQuota holds the incremental ranking to the plain one (rankExports)
// and its heaps to their invariants.
func checkQuota(t *testing.T, q *clusterQuota) {
	t.Helper()
	var exports []*brokerv1.ExportedService
	for _, e := range q.entries {
		exports = append(exports, &brokerv1.ExportedService{Spec: brokerv1.ExportedServiceSpec{
			ServiceNamespace: e.ns, ServiceName: e.name, ExportCreationTimestamp: metav1.NewTime(e.claimed)}})
	}
	in, _ := rankExports(exports, q.joined, q.max)
	slices.Sort(in)
	if got := q.inCapKeys(); !slices.Equal(got, in) {
		t.Fatalf("incremental ranking took %v; sorting takes %v", got, in)
	}
	if q.taken.Len()+q.left.Len() != len(q.entries) || q.taken.Len() > q.max {
		t.Fatalf("heaps hold %d + %d of %d entries (max %d)", q.taken.Len(), q.left.Len(), len(q.entries), q.max)
	}
	for _, h := range []*entryHeap{&q.taken, &q.left} {
		for i, e := range h.items {
			if e.idx != i || e.taken != h.newest {
				t.Fatalf("entry %s at %d says idx %d, taken %v", e.key(), i, e.idx, e.taken)
			}
		}
	}
}

// FuzzQuota runs arbitrary sequences of puts, deletes and join times
// through the incremental ranking and holds it, after every step, to the
// plain sort; the flips it reports must be exactly the standings that
// changed.
func FuzzQuota(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, uint8(2))
	f.Add([]byte{3, 3, 3, 200, 7, 7, 100, 1, 2}, uint8(1))
	f.Fuzz(func(t *testing.T, ops []byte, max uint8) {
		q := newClusterQuota(int(max%5) + 1)
		for i := 0; i+1 < len(ops); i += 2 {
			before := map[string]standing{}
			for k, e := range q.entries {
				before[k] = e.standing()
			}
			b, arg := ops[i], ops[i+1]
			key := fmt.Sprintf("n%d/s%d", arg%3, arg%7)
			var got []flip
			switch b % 8 {
			case 0:
				got = q.delete(key)
			case 1:
				got = q.setJoined(minute(int(arg%16) - 1))
			default:
				ns, name, _ := strings.Cut(key, "/")
				got = q.put(ns, name, minute(int(b/8)%16))
			}
			checkQuota(t, q)
			keys := slices.Sorted(maps.Keys(q.entries))
			for k := range before {
				if q.entries[k] == nil {
					keys = append(keys, k)
				}
			}
			var want []flip
			for _, k := range keys {
				if after := q.standing(k); after != before[k] && (before[k] != unranked || after != unranked) {
					want = append(want, flip{k, before[k], after})
				}
			}
			slices.SortFunc(want, func(x, y flip) int { return strings.Compare(x.key, y.key) })
			if !slices.Equal(got, want) {
				t.Fatalf("step %d reported flips %v; standings changed %v", i/2, got, want)
			}
		}
	})
}

// BenchmarkQuota measures what the import cap costs: an informer event
// (put) in a clusterset of 1,000 members with 10 exports each, the same
// against one member flooding 100,000 exports past a cap of 2,000, and an
// import reconcile's look-up.
func BenchmarkQuota(b *testing.B) {
	fill := func(clusters, perCluster int) (*importCaps, []string) {
		c := newImportCaps("local", DefaultMaxImportsPerCluster)
		ids := make([]string, clusters)
		for i := range clusters {
			ids[i] = fmt.Sprintf("m%04d", i)
			for j := range perCluster {
				c.put(ids[i], fmt.Sprintf("ns%d", j%50), fmt.Sprintf("s%d", j), minute(j))
			}
		}
		return c, ids
	}
	b.Run("event/1000x10", func(b *testing.B) {
		c, ids := fill(1000, 10)
		b.ResetTimer()
		for i := range b.N {
			c.put(ids[i%1000], "ns0", "s0", minute(i%2*100))
		}
	})
	b.Run("event/flood-100000", func(b *testing.B) {
		c, ids := fill(1, 100000)
		b.ResetTimer()
		for i := range b.N {
			// An old claim displaces the newest taken; the next put takes
			// it back: both ends move every time.
			c.put(ids[0], "ns0", "s0", minute(i%2*200000-1))
		}
	})
	b.Run("lookup/1000x10", func(b *testing.B) {
		c, ids := fill(1000, 10)
		b.ResetTimer()
		for i := range b.N {
			c.standing(ids[i%1000], "ns3/s3")
		}
	})
}

// TestCapReportsAreBounded: what the cap reports (the per-namespace
// changes behind the Events, the oldest left out, the ServiceImport's
// condition) names a few and counts the rest, however many are left out;
// a report takes the changes, so the next one starts afresh.
func TestCapReportsAreBounded(t *testing.T) {
	c := newImportCaps("local", 1)
	for i := range 1000 {
		c.put("h", fmt.Sprintf("ns%d", i%10), fmt.Sprintf("s%03d", i), minute(i))
	}
	if got := c.put("local", "ns0", "mine", minute(0)); got != nil || c.standing("local", "ns0/mine") != inCap {
		t.Errorf("this cluster's own export was ranked: %v", got)
	}
	r := c.report("h")
	if r.exports != 1000 || r.leftOut != 999 || !slices.Equal(r.oldest, []string{"ns1/s001", "ns2/s002", "ns3/s003"}) {
		t.Errorf("report %d exports, %d left out, oldest %v", r.exports, r.leftOut, r.oldest)
	}
	out := 0
	for ns, ch := range r.changes {
		out += ch.out
		if len(ch.outNames) > maxNamed || ch.in != 0 {
			t.Errorf("%s: %+v", ns, ch)
		}
	}
	if out != 999 {
		t.Errorf("the changes count %d left out, want 999", out)
	}
	if r := c.report("h"); len(r.changes) != 0 || r.reported != 999 {
		t.Errorf("a second report with nothing changed: %+v", r)
	}
	c.remove("h", "ns0/s000")
	r = c.report("h")
	if ch := r.changes["ns1"]; r.leftOut != 998 || ch == nil || ch.in != 1 || !slices.Equal(ch.inNames, []string{"s001"}) {
		t.Errorf("after the taken one went: %d left out, changes %+v", r.leftOut, r.changes)
	}

	var st mcsv1beta1.ServiceImportStatus
	var many []string
	for i := range 500 {
		many = append(many, fmt.Sprintf("cluster-%03d", i))
	}
	setCappedCondition(&st, many, 2000, 1)
	cond := meta.FindStatusCondition(st.Conditions, ConditionImportCapped)
	if cond == nil || len(cond.Message) > 400 || !strings.Contains(cond.Message, "and 497 more") || !strings.Contains(cond.Message, "2000") {
		t.Errorf("condition %+v", cond)
	}
	setCappedCondition(&st, nil, 2000, 1)
	if len(st.Conditions) != 0 {
		t.Errorf("the condition stays with nothing capped: %+v", st.Conditions)
	}
}
