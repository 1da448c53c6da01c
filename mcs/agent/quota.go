package agent

import (
	"container/heap"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// The per-source import cap (docs/security.md, H3). Every member imports
// every export, so one member exporting without limit would make every
// other agent write a ServiceImport, a derived Service (a ClusterIP from
// its own service range) and EndpointSlices per export. An agent imports
// at most a fixed number of services from each other cluster: the oldest
// ones, by the export time a merge may use (brokerv1.EffectiveExportTime),
// ties broken by namespace and name. Every member sees the same records
// and the same server-set join times, so every member takes the same ones.
// A left-out export contributes nothing to any import.
//
// The ranking is kept per source cluster, updated by each record's
// informer event in O(log n): the taken exports in a heap whose top is the
// newest taken, the left-out ones in a heap whose top is the oldest left
// out. An import's reconcile only looks its key up; a slot freed by an
// unexport is filled from the left-out heap at once, and the keys whose
// standing changed are handed back to be queued.

// DefaultMaxImportsPerCluster is the cap when the configuration names
// none: far above what a member exports in practice, low enough that a
// hostile member cannot use up an importer's service range.
const DefaultMaxImportsPerCluster = 2000

// rankKey orders one cluster's exports: oldest first, then by namespace
// and name, so the order is total and the same in every member.
type rankKey struct {
	at       time.Time
	ns, name string
}

func (x rankKey) compare(y rankKey) int {
	if c := x.at.Compare(y.at); c != 0 {
		return c
	}
	if c := strings.Compare(x.ns, y.ns); c != 0 {
		return c
	}
	return strings.Compare(x.name, y.name)
}

// quotaEntry is one export of a source cluster in its ranking.
type quotaEntry struct {
	ns, name string
	claimed  time.Time
	rank     rankKey
	taken    bool
	idx      int // in its heap
}

func (e *quotaEntry) key() string { return e.ns + "/" + e.name }

// entryHeap is a heap of entries: newest on top for the taken, oldest on
// top for the left out.
type entryHeap struct {
	items  []*quotaEntry
	newest bool
}

func (h *entryHeap) Len() int { return len(h.items) }
func (h *entryHeap) Less(i, j int) bool {
	c := h.items[i].rank.compare(h.items[j].rank)
	if h.newest {
		return c > 0
	}
	return c < 0
}
func (h *entryHeap) Swap(i, j int) {
	h.items[i], h.items[j] = h.items[j], h.items[i]
	h.items[i].idx, h.items[j].idx = i, j
}
func (h *entryHeap) Push(x any) {
	e := x.(*quotaEntry)
	e.idx = len(h.items)
	h.items = append(h.items, e)
}
func (h *entryHeap) Pop() any {
	n := len(h.items) - 1
	e := h.items[n]
	h.items[n] = nil
	h.items = h.items[:n]
	return e
}

// clusterQuota is one source cluster's ranking.
type clusterQuota struct {
	max     int
	joined  time.Time
	entries map[string]*quotaEntry // by namespace/name
	taken   entryHeap
	left    entryHeap
}

func newClusterQuota(max int) *clusterQuota {
	return &clusterQuota{max: max, entries: map[string]*quotaEntry{}, taken: entryHeap{newest: true}}
}

// standing is where an export stands in its cluster's ranking.
type standing int8

const (
	unranked standing = iota // no such export
	inCap                    // taken
	overCap                  // left out
)

func (e *quotaEntry) standing() standing {
	if e.taken {
		return inCap
	}
	return overCap
}

// flip is one export whose standing an operation changed.
type flip struct {
	key           string
	before, after standing
}

// flips collects the entries an operation touched, with each one's
// standing before it.
type flips map[string]standing

func (f flips) touch(e *quotaEntry, before standing) {
	if _, seen := f[e.key()]; !seen {
		f[e.key()] = before
	}
}

// changed lists the keys whose standing differs from before, by key.
func (f flips) changed(q *clusterQuota) []flip {
	var out []flip
	for k, before := range f {
		if after := q.standing(k); after != before {
			out = append(out, flip{k, before, after})
		}
	}
	slices.SortFunc(out, func(x, y flip) int { return strings.Compare(x.key, y.key) })
	return out
}

func (q *clusterQuota) standing(key string) standing {
	if e := q.entries[key]; e != nil {
		return e.standing()
	}
	return unranked
}

// put adds or updates the export of namespace/name with its claimed
// export time, and returns the exports whose standing changed.
func (q *clusterQuota) put(ns, name string, claimed time.Time) []flip {
	f := flips{}
	if e := q.entries[ns+"/"+name]; e != nil {
		if e.claimed.Equal(claimed) {
			return nil
		}
		q.remove(e, f)
	}
	e := &quotaEntry{ns: ns, name: name, claimed: claimed}
	f.touch(e, unranked)
	q.insert(e, f)
	return f.changed(q)
}

// delete drops the export of key, and returns the exports whose standing
// changed: the one dropped and, if it was taken, the next in rank, taken
// in its place.
func (q *clusterQuota) delete(key string) []flip {
	e := q.entries[key]
	if e == nil {
		return nil
	}
	f := flips{}
	q.remove(e, f)
	return f.changed(q)
}

// setJoined re-ranks every export by a new join time of the cluster (its
// Cluster record appeared, went, or was made anew).
func (q *clusterQuota) setJoined(joined time.Time) []flip {
	if joined.Equal(q.joined) {
		return nil
	}
	q.joined = joined
	f := flips{}
	all := make([]*quotaEntry, 0, len(q.entries))
	for _, e := range q.entries {
		f.touch(e, e.standing())
		e.rank = q.rankOf(e)
		all = append(all, e)
	}
	slices.SortFunc(all, func(x, y *quotaEntry) int { return x.rank.compare(y.rank) })
	q.taken.items, q.left.items = nil, nil
	for i, e := range all {
		e.taken = i < q.max
		if e.taken {
			q.taken.Push(e)
		} else {
			q.left.Push(e)
		}
	}
	heap.Init(&q.taken)
	heap.Init(&q.left)
	return f.changed(q)
}

func (q *clusterQuota) rankOf(e *quotaEntry) rankKey {
	at := brokerv1.EffectiveExportTime(metav1.NewTime(e.claimed), q.joined)
	return rankKey{at: at.Time, ns: e.ns, name: e.name}
}

// insert places a new entry: taken while there is room or when it is older
// than the newest taken, which then leaves.
func (q *clusterQuota) insert(e *quotaEntry, f flips) {
	e.rank = q.rankOf(e)
	q.entries[e.key()] = e
	if q.taken.Len() < q.max {
		e.taken = true
		heap.Push(&q.taken, e)
		return
	}
	if newest := q.taken.items[0]; e.rank.compare(newest.rank) < 0 {
		f.touch(newest, inCap)
		heap.Pop(&q.taken)
		newest.taken = false
		heap.Push(&q.left, newest)
		e.taken = true
		heap.Push(&q.taken, e)
		return
	}
	e.taken = false
	heap.Push(&q.left, e)
}

// remove takes an entry out; a taken one's slot goes to the oldest left
// out.
func (q *clusterQuota) remove(e *quotaEntry, f flips) {
	f.touch(e, e.standing())
	delete(q.entries, e.key())
	if !e.taken {
		heap.Remove(&q.left, e.idx)
		return
	}
	heap.Remove(&q.taken, e.idx)
	e.taken = false
	if q.left.Len() > 0 {
		next := q.left.items[0]
		f.touch(next, overCap)
		heap.Pop(&q.left)
		next.taken = true
		heap.Push(&q.taken, next)
	}
}

// oldestLeftOut are up to n of the left-out exports, oldest first, for a
// report that must not grow with their number.
func (q *clusterQuota) oldestLeftOut(n int) []string {
	best := make([]*quotaEntry, 0, n+1)
	for _, e := range q.left.items {
		i, _ := slices.BinarySearchFunc(best, e, func(x, y *quotaEntry) int { return x.rank.compare(y.rank) })
		if i >= n {
			continue
		}
		best = slices.Insert(best, i, e)
		if len(best) > n {
			best = best[:n]
		}
	}
	out := make([]string, len(best))
	for i, e := range best {
		out[i] = e.key()
	}
	return out
}

// rankExports is the ranking stated plainly: one cluster's exports sorted,
// the first max taken. The incremental ranking must always agree with it
// (TestQuotaAgreesWithRanking, FuzzQuota).
func rankExports(exports []*brokerv1.ExportedService, joined time.Time, max int) (in, out []string) {
	type ranked struct {
		rank rankKey
		key  string
	}
	all := make([]ranked, 0, len(exports))
	for _, e := range exports {
		at := brokerv1.EffectiveExportTime(e.Spec.ExportCreationTimestamp, joined)
		all = append(all, ranked{rankKey{at.Time, e.Spec.ServiceNamespace, e.Spec.ServiceName},
			e.Spec.ServiceNamespace + "/" + e.Spec.ServiceName})
	}
	slices.SortFunc(all, func(x, y ranked) int { return x.rank.compare(y.rank) })
	for i, r := range all {
		if i < max {
			in = append(in, r.key)
		} else {
			out = append(out, r.key)
		}
	}
	return in, out
}
