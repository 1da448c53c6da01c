// Package merge combines the export records of every cluster that exports
// one service into what importers build from it: the service's type, ports
// and policies, and the conflicts between the exports. The oldest export
// wins every conflict (ties by cluster id), ports are the union, and every
// constituent export learns of every conflict, as KEP-1645 asks. Exports
// whose port sets differ conflict too (PortConflict), though the import
// carries them all: mcs-api's conformance suite expects the condition, and
// an operator learns which clusters serve only some of the ports.
//
// Merge is a pure function of the records, so every agent in the clusterset
// reaches the same answer from the same broker state without talking to the
// others.
package merge

import (
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// Result is the merged view of one service's exports.
type Result struct {
	// Winner is the cluster of the oldest export, whose values win.
	Winner string
	// Clusters are the exporting clusters, sorted.
	Clusters []string

	Type                  brokerv1.ServiceType
	Ports                 []brokerv1.ServicePort
	SessionAffinity       corev1.ServiceAffinity
	SessionAffinityConfig *corev1.SessionAffinityConfig
	IPFamilies            []corev1.IPFamily
	InternalTrafficPolicy *corev1.ServiceInternalTrafficPolicy
	TrafficDistribution   *string
	Labels                map[string]string
	Annotations           map[string]string

	// Conflicts lists each field on which some export disagrees with the
	// winner, in the order of mcs-api's reasons.
	Conflicts []Conflict
}

// Conflict is one field on which exports disagree.
type Conflict struct {
	// Reason is mcs-api's condition reason, e.g. PortConflict.
	Reason mcsv1beta1.ServiceExportConditionReason
	// Field names what disagrees, as a person reads it ("port \"http\"").
	Field string
	// Value is the winner's value, quoted for the message.
	Value string
	// Disagree are the clusters whose export differs from the winner's or,
	// for a Union conflict, lacks some of the union's values.
	Disagree []string
	// Union: the import carries every export's values (the ports), not
	// the winner's alone; Value lists them.
	Union bool
}

// Merge merges the exports of one service. It returns the zero Result for
// no exports.
func Merge(exports []*brokerv1.ExportedService) Result {
	if len(exports) == 0 {
		return Result{}
	}
	sorted := slices.Clone(exports)
	slices.SortFunc(sorted, func(a, b *brokerv1.ExportedService) int {
		if c := a.Spec.ExportCreationTimestamp.Compare(b.Spec.ExportCreationTimestamp.Time); c != 0 {
			return c
		}
		return strings.Compare(a.Spec.SourceCluster, b.Spec.SourceCluster)
	})
	oldest := sorted[0].Spec
	r := Result{
		Winner:                oldest.SourceCluster,
		Type:                  oldest.Type,
		SessionAffinity:       affinity(oldest.SessionAffinity),
		SessionAffinityConfig: oldest.SessionAffinityConfig,
		IPFamilies:            oldest.IPFamilies,
		InternalTrafficPolicy: oldest.InternalTrafficPolicy,
		TrafficDistribution:   oldest.TrafficDistribution,
		Labels:                oldest.ExportedLabels,
		Annotations:           oldest.ExportedAnnotations,
	}
	for _, e := range sorted {
		r.Clusters = append(r.Clusters, e.Spec.SourceCluster)
	}
	slices.Sort(r.Clusters)

	var c conflicts
	r.Ports = unionPorts(sorted, &c)
	lacking(sorted, r.Ports, &c)
	for _, e := range sorted[1:] {
		s, id := e.Spec, e.Spec.SourceCluster
		if s.Type != oldest.Type {
			c.add(mcsv1beta1.ServiceExportReasonTypeConflict, "type", string(oldest.Type), id)
		}
		if affinity(s.SessionAffinity) != r.SessionAffinity {
			c.add(mcsv1beta1.ServiceExportReasonSessionAffinityConflict, "sessionAffinity", string(r.SessionAffinity), id)
		}
		if !reflect.DeepEqual(s.SessionAffinityConfig, oldest.SessionAffinityConfig) {
			c.add(mcsv1beta1.ServiceExportReasonSessionAffinityConfigConflict, "sessionAffinityConfig", affinityConfig(oldest.SessionAffinityConfig), id)
		}
		if !maps.Equal(s.ExportedLabels, oldest.ExportedLabels) {
			c.add(mcsv1beta1.ServiceExportReasonLabelsConflict, "exportedLabels", fmt.Sprint(oldest.ExportedLabels), id)
		}
		if !maps.Equal(s.ExportedAnnotations, oldest.ExportedAnnotations) {
			c.add(mcsv1beta1.ServiceExportReasonAnnotationsConflict, "exportedAnnotations", fmt.Sprint(oldest.ExportedAnnotations), id)
		}
		if trafficPolicy(s.InternalTrafficPolicy) != trafficPolicy(oldest.InternalTrafficPolicy) {
			c.add(mcsv1beta1.ServiceExportReasonInternalTrafficPolicyConflict, "internalTrafficPolicy", trafficPolicy(oldest.InternalTrafficPolicy), id)
		}
		if deref(s.TrafficDistribution) != deref(oldest.TrafficDistribution) {
			c.add(mcsv1beta1.ServiceExportReasonTrafficDistributionConflict, "trafficDistribution", deref(oldest.TrafficDistribution), id)
		}
		// Families only conflict where a cluster could not be reached at
		// all: it shares no family with the winner.
		if len(s.IPFamilies) > 0 && len(oldest.IPFamilies) > 0 && !slices.ContainsFunc(s.IPFamilies, func(f corev1.IPFamily) bool {
			return slices.Contains(oldest.IPFamilies, f)
		}) {
			c.add(mcsv1beta1.ServiceExportReasonIPFamilyConflict, "ipFamilies", fmt.Sprint(oldest.IPFamilies), id)
		}
	}
	r.Conflicts = c.sorted()
	return r
}

// unionPorts merges ports by name (by protocol and number when unnamed),
// oldest export first. A later export's port that reuses a name with
// another protocol or number, or a number with another name, conflicts and
// is left out.
func unionPorts(sorted []*brokerv1.ExportedService, c *conflicts) []brokerv1.ServicePort {
	var out []brokerv1.ServicePort
	for i, e := range sorted {
		for _, p := range e.Spec.Ports {
			p.Protocol = Protocol(p.Protocol)
			dup := slices.IndexFunc(out, func(q brokerv1.ServicePort) bool { return samePort(p, q) })
			if dup < 0 {
				out = append(out, p)
				continue
			}
			q := out[dup]
			if q.Name == p.Name && q.Port == p.Port && q.Protocol == p.Protocol {
				continue
			}
			if i > 0 {
				c.add(mcsv1beta1.ServiceExportReasonPortConflict, portField(q), fmt.Sprintf("%s/%d", q.Protocol, q.Port), e.Spec.SourceCluster)
			}
		}
	}
	return out
}

// samePort says whether two ports are one port of the service (by name, or
// by protocol and number), though they may disagree on the rest.
func samePort(p, q brokerv1.ServicePort) bool {
	return p.Name == q.Name || p.Port == q.Port && Protocol(p.Protocol) == Protocol(q.Protocol)
}

// lacking records, as one PortConflict over the union, every export that
// lacks some port of the union. An export that has a port in another form
// is not lacking it: unionPorts has reported that port's conflict.
func lacking(sorted []*brokerv1.ExportedService, union []brokerv1.ServicePort, c *conflicts) {
	var missing []string
	for _, e := range sorted {
		for _, q := range union {
			if !slices.ContainsFunc(e.Spec.Ports, func(p brokerv1.ServicePort) bool { return samePort(p, q) }) {
				missing = append(missing, e.Spec.SourceCluster)
				break
			}
		}
	}
	if len(missing) == 0 {
		return
	}
	var all []string
	for _, p := range union {
		v := fmt.Sprintf("%s/%d", p.Protocol, p.Port)
		if p.Name != "" {
			v = fmt.Sprintf("%q %s", p.Name, v)
		}
		all = append(all, v)
	}
	slices.Sort(missing)
	c.list = append(c.list, Conflict{Reason: mcsv1beta1.ServiceExportReasonPortConflict, Field: "ports",
		Value: strings.Join(all, ", "), Disagree: missing, Union: true})
}

func portField(p brokerv1.ServicePort) string {
	if p.Name == "" {
		return fmt.Sprintf("port %s/%d", p.Protocol, p.Port)
	}
	return fmt.Sprintf("port %q", p.Name)
}

// Condition is the Conflict condition every constituent export carries:
// True with the reasons joined by commas and a message naming each field,
// the winning value and cluster, and who disagrees; else False/NoConflicts.
func (r Result) Condition(generation int64) metav1.Condition {
	if len(r.Conflicts) == 0 {
		cond := mcsv1beta1.NewServiceExportCondition(mcsv1beta1.ServiceExportConditionConflict, metav1.ConditionFalse,
			mcsv1beta1.ServiceExportReasonNoConflicts, "All exports of this service agree.")
		cond.ObservedGeneration = generation
		return cond
	}
	var reasons []string
	var msgs []string
	for _, c := range r.Conflicts {
		if !slices.Contains(reasons, string(c.Reason)) {
			reasons = append(reasons, string(c.Reason))
		}
		using := fmt.Sprintf("Using %q from oldest service export in %q.", c.Value, r.Winner)
		if c.Union {
			using = fmt.Sprintf("Using the union of every service export's %s: %s.", c.Field, c.Value)
		}
		msgs = append(msgs, fmt.Sprintf("Conflicting %s. %s %d/%d clusters disagree: %s.",
			c.Field, using, len(c.Disagree), len(r.Clusters), strings.Join(c.Disagree, ", ")))
	}
	cond := mcsv1beta1.NewServiceExportCondition(mcsv1beta1.ServiceExportConditionConflict, metav1.ConditionTrue,
		mcsv1beta1.ServiceExportConditionReason(strings.Join(reasons, ",")), strings.Join(msgs, " "))
	cond.ObservedGeneration = generation
	return cond
}

// conflicts accumulates disagreeing clusters per (reason, field).
type conflicts struct{ list []Conflict }

func (c *conflicts) add(reason mcsv1beta1.ServiceExportConditionReason, field, value, cluster string) {
	for i := range c.list {
		if c.list[i].Reason == reason && c.list[i].Field == field {
			if !slices.Contains(c.list[i].Disagree, cluster) {
				c.list[i].Disagree = append(c.list[i].Disagree, cluster)
				slices.Sort(c.list[i].Disagree)
			}
			return
		}
	}
	c.list = append(c.list, Conflict{Reason: reason, Field: field, Value: value, Disagree: []string{cluster}})
}

// reasonOrder is mcs-api's order of conflict reasons.
var reasonOrder = []mcsv1beta1.ServiceExportConditionReason{
	mcsv1beta1.ServiceExportReasonPortConflict,
	mcsv1beta1.ServiceExportReasonTypeConflict,
	mcsv1beta1.ServiceExportReasonSessionAffinityConflict,
	mcsv1beta1.ServiceExportReasonSessionAffinityConfigConflict,
	mcsv1beta1.ServiceExportReasonLabelsConflict,
	mcsv1beta1.ServiceExportReasonAnnotationsConflict,
	mcsv1beta1.ServiceExportReasonInternalTrafficPolicyConflict,
	mcsv1beta1.ServiceExportReasonTrafficDistributionConflict,
	mcsv1beta1.ServiceExportReasonIPFamilyConflict,
}

func (c *conflicts) sorted() []Conflict {
	out := slices.Clone(c.list)
	slices.SortStableFunc(out, func(a, b Conflict) int {
		return slices.Index(reasonOrder, a.Reason) - slices.Index(reasonOrder, b.Reason)
	})
	return out
}

func affinity(a corev1.ServiceAffinity) corev1.ServiceAffinity {
	if a == "" {
		return corev1.ServiceAffinityNone
	}
	return a
}

func affinityConfig(c *corev1.SessionAffinityConfig) string {
	if c == nil || c.ClientIP == nil || c.ClientIP.TimeoutSeconds == nil {
		return "none"
	}
	return fmt.Sprintf("clientIP timeout %ds", *c.ClientIP.TimeoutSeconds)
}

func trafficPolicy(p *corev1.ServiceInternalTrafficPolicy) string {
	if p == nil {
		return string(corev1.ServiceInternalTrafficPolicyCluster)
	}
	return string(*p)
}

// Protocol is p, TCP when empty (the API's default), so ports compare
// alike whether the default was written or not.
func Protocol(p corev1.Protocol) corev1.Protocol {
	if p == "" {
		return corev1.ProtocolTCP
	}
	return p
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
