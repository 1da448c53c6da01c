package hubquota

import (
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// TestTally plays sequences of informer events and checks, after each,
// which members' counts changed and every member's counts.
func TestTally(t *testing.T) {
	type event struct {
		kind         Kind
		name, member string // member "": deleted or unlabelled
		changed      []string
	}
	for _, tt := range []struct {
		name   string
		events []event
		want   map[string]Counts
	}{
		{name: "nothing", want: map[string]Counts{"a": {}}},
		{name: "creates count per member and kind",
			events: []event{
				{Exports, "ns/a-1", "a", []string{"a"}},
				{Exports, "ns/a-2", "a", []string{"a"}},
				{EndpointSlices, "ns/a-1-x", "a", []string{"a"}},
				{Exports, "ns/b-1", "b", []string{"b"}},
			},
			want: map[string]Counts{"a": {2, 1}, "b": {1, 0}, "c": {}}},
		{name: "an update that keeps the owner changes nothing",
			events: []event{
				{Exports, "ns/a-1", "a", []string{"a"}},
				{Exports, "ns/a-1", "a", nil},
			},
			want: map[string]Counts{"a": {1, 0}}},
		{name: "deletes uncount, once",
			events: []event{
				{Exports, "ns/a-1", "a", []string{"a"}},
				{Exports, "ns/a-2", "a", []string{"a"}},
				{Exports, "ns/a-1", "", []string{"a"}},
				{Exports, "ns/a-1", "", nil},
			},
			want: map[string]Counts{"a": {1, 0}}},
		{name: "a delete of a record never seen changes nothing",
			events: []event{{EndpointSlices, "ns/x", "", nil}},
			want:   map[string]Counts{"a": {}}},
		{name: "a relabelled record moves between members",
			events: []event{
				{EndpointSlices, "ns/s", "a", []string{"a"}},
				{EndpointSlices, "ns/s", "b", []string{"a", "b"}},
			},
			want: map[string]Counts{"a": {}, "b": {0, 1}}},
		{name: "a record losing its label is no one's",
			events: []event{
				{EndpointSlices, "ns/s", "a", []string{"a"}},
				{EndpointSlices, "ns/s", "", []string{"a"}},
				{EndpointSlices, "ns/s", "", nil},
			},
			want: map[string]Counts{"a": {}}},
		{name: "an export and a slice of one name are two records",
			events: []event{
				{Exports, "ns/a-1", "a", []string{"a"}},
				{EndpointSlices, "ns/a-1", "a", []string{"a"}},
				{Exports, "ns/a-1", "", []string{"a"}},
			},
			want: map[string]Counts{"a": {0, 1}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tl := newTally()
			for i, e := range tt.events {
				if got := tl.set(e.kind, e.name, e.member); !slices.Equal(got, e.changed) {
					t.Errorf("event %d (%v %s → %q): changed %v, want %v", i, e.kind, e.name, e.member, got, e.changed)
				}
			}
			for m, want := range tt.want {
				if got := tl.get(m); got != want {
					t.Errorf("member %s: counts %v, want %v", m, got, want)
				}
			}
			for m, c := range tl.counts {
				if *c == (Counts{}) {
					t.Errorf("member %s kept with zero counts", m)
				}
			}
		})
	}
}

// TestDesiredStatus: a status is written when the counts differ or its
// observedTime is missing or half a resync old, and never otherwise.
func TestDesiredStatus(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	at := func(ago time.Duration) *metav1.Time { v := metav1.NewTime(now.Add(-ago)); return &v }
	const resync = 10 * time.Minute
	for _, tt := range []struct {
		name   string
		have   brokerv1.MemberPolicyStatus
		counts Counts
		write  bool
	}{
		{"never counted", brokerv1.MemberPolicyStatus{}, Counts{}, true},
		{"same and fresh", brokerv1.MemberPolicyStatus{Exports: 3, EndpointSlices: 4, ObservedTime: at(time.Minute)}, Counts{3, 4}, false},
		{"exports changed", brokerv1.MemberPolicyStatus{Exports: 3, EndpointSlices: 4, ObservedTime: at(time.Second)}, Counts{4, 4}, true},
		{"slices changed", brokerv1.MemberPolicyStatus{Exports: 3, EndpointSlices: 4, ObservedTime: at(time.Second)}, Counts{3, 0}, true},
		{"same but half a resync old", brokerv1.MemberPolicyStatus{Exports: 3, EndpointSlices: 4, ObservedTime: at(resync / 2)}, Counts{3, 4}, true},
		{"same, just under half a resync", brokerv1.MemberPolicyStatus{Exports: 3, EndpointSlices: 4, ObservedTime: at(resync/2 - time.Second)}, Counts{3, 4}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, write := desiredStatus(tt.have, tt.counts, now, resync)
			if write != tt.write {
				t.Fatalf("write %v, want %v", write, tt.write)
			}
			if !write {
				return
			}
			if got.Exports != tt.counts[Exports] || got.EndpointSlices != tt.counts[EndpointSlices] || got.ObservedTime == nil || !got.ObservedTime.Time.Equal(now) {
				t.Errorf("status %+v, want counts %v observed at %v", got, tt.counts, now)
			}
		})
	}
}
