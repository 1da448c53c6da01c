package agent

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// The import cap in the agent (the ranking itself is quota.go): the
// informer handlers keep each other cluster's ranking and queue the
// imports whose standing changed; an import's reconcile leaves out the
// exports the cap leaves out; the "import-cap" controller reports each
// cluster's change once (log, metric, Events), however many exports and
// reconciles it touched.

// ConditionImportCapped on a ServiceImport is True while the export of
// one or more clusters is left out of it by the per-source import cap;
// its message names them. It is absent when none is.
const (
	ConditionImportCapped = "isthmus.dev/ImportCapped"
	ReasonImportCapped    = "ImportCapped"
	reasonImportUncapped  = "ImportUncapped"
)

// maxNamed bounds how many clusters or services one report names.
const maxNamed = 3

// importCaps is the ranking of every other cluster's exports.
type importCaps struct {
	local string
	max   int

	mu       sync.Mutex
	clusters map[string]*clusterQuota
	// pending is what changed by namespace since each cluster's last
	// report, for its Events.
	pending map[string]map[string]*capChange
	// reported is each cluster's left-out count as last reported.
	reported map[string]int
}

// capChange counts, in one namespace, the exports that left and entered
// the cap since the last report, naming a few.
type capChange struct {
	out, in           int
	outNames, inNames []string
}

func newImportCaps(local string, max int) *importCaps {
	return &importCaps{local: local, max: max, clusters: map[string]*clusterQuota{},
		pending: map[string]map[string]*capChange{}, reported: map[string]int{}}
}

func (c *importCaps) quota(cluster string) *clusterQuota {
	q := c.clusters[cluster]
	if q == nil {
		q = newClusterQuota(c.max)
		c.clusters[cluster] = q
	}
	return q
}

// put, remove and setJoined change a cluster's ranking and return what
// changed; this cluster's own exports are never capped.
func (c *importCaps) put(cluster, ns, name string, claimed time.Time) []flip {
	if cluster == c.local {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.note(cluster, c.quota(cluster).put(ns, name, claimed))
}

func (c *importCaps) remove(cluster, key string) []flip {
	if cluster == c.local {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	q := c.clusters[cluster]
	if q == nil {
		return nil
	}
	return c.note(cluster, q.delete(key))
}

// setJoined takes a cluster's join time (zero: its record went). A
// cluster with neither a record nor exports is forgotten.
func (c *importCaps) setJoined(cluster string, joined time.Time) []flip {
	if cluster == c.local {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.note(cluster, c.quota(cluster).setJoined(joined))
	if joined.IsZero() && len(c.clusters[cluster].entries) == 0 {
		delete(c.clusters, cluster)
	}
	return out
}

// note files a change's flips for the cluster's next report.
func (c *importCaps) note(cluster string, flips []flip) []flip {
	for _, f := range flips {
		if f.after != overCap && f.before != overCap {
			continue // entered or left with room to spare
		}
		ns, name, _ := strings.Cut(f.key, "/")
		byNS := c.pending[cluster]
		if byNS == nil {
			byNS = map[string]*capChange{}
			c.pending[cluster] = byNS
		}
		ch := byNS[ns]
		if ch == nil {
			ch = &capChange{}
			byNS[ns] = ch
		}
		switch {
		case f.after == overCap:
			ch.out++
			if len(ch.outNames) < maxNamed {
				ch.outNames = append(ch.outNames, name)
			}
		case f.after == inCap:
			ch.in++
			if len(ch.inNames) < maxNamed {
				ch.inNames = append(ch.inNames, name)
			}
		}
	}
	return flips
}

// standing is where cluster's export of key stands.
func (c *importCaps) standing(cluster, key string) standing {
	if cluster == c.local {
		return inCap
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if q := c.clusters[cluster]; q != nil {
		return q.standing(key)
	}
	return unranked
}

// capReport is one cluster's standing for its report.
type capReport struct {
	exports, leftOut, reported int
	oldest                     []string // the oldest left out
	changes                    map[string]*capChange
}

// report takes what changed for cluster since its last report.
func (c *importCaps) report(cluster string) capReport {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := capReport{reported: c.reported[cluster], changes: c.pending[cluster]}
	delete(c.pending, cluster)
	if q := c.clusters[cluster]; q != nil {
		r.exports, r.leftOut, r.oldest = len(q.entries), q.left.Len(), q.oldestLeftOut(maxNamed)
	}
	if r.leftOut == 0 {
		delete(c.reported, cluster)
	} else {
		c.reported[cluster] = r.leftOut
	}
	return r
}

// exportRecordChanged keeps the ranking of a broker export record's
// cluster and queues what the change concerns: the service for both
// controllers, every import whose standing changed, and the cluster's
// report.
func (a *Agent) exportRecordChanged(old, cur any) {
	o, _ := unwrap(old).(*brokerv1.ExportedService)
	e, _ := unwrap(cur).(*brokerv1.ExportedService)
	var keys []string
	if o != nil && (e == nil || o.Spec.SourceCluster != e.Spec.SourceCluster || recordKey(o) != recordKey(e)) {
		a.capsChanged(o.Spec.SourceCluster, a.caps.remove(o.Spec.SourceCluster, recordKey(o)))
		keys = append(keys, recordKey(o))
	}
	if e != nil {
		a.capsChanged(e.Spec.SourceCluster, a.caps.put(e.Spec.SourceCluster, e.Spec.ServiceNamespace, e.Spec.ServiceName,
			e.Spec.ExportCreationTimestamp.Time))
		keys = append(keys, recordKey(e))
	}
	if e == nil && o != nil {
		a.own.forget(recordWriteKey(o.Name))
	}
	// This cluster's own record, holding what its export reconcile just
	// wrote, brings that reconcile nothing (ownwrites.go); every agent's
	// import, this one's included, still takes it.
	mine := e != nil && a.own.shows(recordWriteKey(e.Name), e) && (o == nil || recordKey(o) == recordKey(e))
	for _, k := range keys {
		if !mine {
			a.exports.enqueue(k)
		}
		a.imports.enqueue(k)
	}
}

func recordKey(e *brokerv1.ExportedService) string {
	return e.Spec.ServiceNamespace + "/" + e.Spec.ServiceName
}

// capsChanged queues the imports whose standing changed and the cluster's
// report.
func (a *Agent) capsChanged(cluster string, flips []flip) {
	if len(flips) == 0 {
		return
	}
	for _, f := range flips {
		a.imports.enqueue(f.key)
	}
	a.capReports.enqueue(cluster)
}

// reportCap says, once per change, how a cluster stands against the cap:
// the gauge, a log line, and an Event on each namespace here where its
// exports left or entered the cap. Nothing in it grows with the number
// of exports left out.
func (a *Agent) reportCap(_ context.Context, cluster string) error {
	r := a.caps.report(cluster)
	limit := a.cfg.MaxImportsPerCluster
	if r.leftOut > 0 {
		a.metrics.importsCapped.WithLabelValues(cluster).Set(float64(r.leftOut))
	} else {
		a.metrics.importsCapped.DeleteLabelValues(cluster)
	}
	switch {
	case r.leftOut > 0 && r.leftOut != r.reported:
		a.log.Warn("not importing some of a cluster's exports: it exports more services than the import cap",
			"peer", cluster, "exports", r.exports, "leftOut", r.leftOut, "cap", limit, "oldestLeftOut", r.oldest)
	case r.leftOut == 0 && r.reported > 0:
		a.log.Info("every export of a cluster fits the import cap again", "peer", cluster, "exports", r.exports, "cap", limit)
	}
	for _, ns := range slices.Sorted(maps.Keys(r.changes)) {
		namespace, err := a.namespaces.Get(ns)
		if apierrors.IsNotFound(err) {
			continue // not imported here anyway
		}
		if err != nil {
			return err
		}
		ch := r.changes[ns]
		if ch.out > 0 {
			a.events.Event(namespace, corev1.EventTypeWarning, ReasonImportCapped, fmt.Sprintf(
				"%d export(s) of cluster %s in this namespace are not imported (%s): %s exports %d services, over this cluster's cap of %d per cluster (the oldest are imported; isthmus agent --max-imports-per-cluster).",
				ch.out, cluster, named(ch.outNames, ch.out), cluster, r.exports, limit))
		}
		if ch.in > 0 {
			a.events.Event(namespace, corev1.EventTypeNormal, reasonImportUncapped, fmt.Sprintf(
				"%d export(s) of cluster %s in this namespace, left out by the import cap before, are imported now (%s).",
				ch.in, cluster, named(ch.inNames, ch.in)))
		}
	}
	return nil
}

// named lists a few names of n, saying how many more there are.
func named(names []string, n int) string {
	s := strings.Join(names, ", ")
	if n > len(names) {
		s += fmt.Sprintf(" and %d more", n-len(names))
	}
	return s
}

// setCappedCondition sets or clears ConditionImportCapped.
func setCappedCondition(st *mcsv1beta1.ServiceImportStatus, capped []string, limit int, generation int64) {
	if len(capped) == 0 {
		meta.RemoveStatusCondition(&st.Conditions, ConditionImportCapped)
		return
	}
	shown := capped[:min(len(capped), maxNamed)]
	msg := fmt.Sprintf("Left out of this import: the export of cluster(s) %s, each of which exports more services than this cluster imports from one cluster (%d, the oldest first; isthmus agent --max-imports-per-cluster).",
		named(shown, len(capped)), limit)
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: ConditionImportCapped, Status: metav1.ConditionTrue,
		Reason: ReasonImportCapped, Message: msg, ObservedGeneration: generation})
}
