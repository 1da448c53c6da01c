package hubquota

// Kind is a kind of record the counter counts per member.
type Kind int

// The kinds of records counted, and their names in the metric's kind label.
const (
	Exports Kind = iota
	EndpointSlices
	kinds
)

func (k Kind) String() string {
	return [...]string{"exports", "endpointslices"}[k]
}

// Counts are one member's records of each kind.
type Counts [kinds]int32

// tally counts each member's records from the informers' events, in O(1)
// per event: it remembers which member each record (by kind and name)
// was counted for, so an update that relabels a record moves it, and a
// delete needs only the name. It is not safe for concurrent use.
type tally struct {
	owner  [kinds]map[string]string
	counts map[string]*Counts
}

func newTally() *tally {
	t := &tally{counts: map[string]*Counts{}}
	for k := range t.owner {
		t.owner[k] = map[string]string{}
	}
	return t
}

// set records that the record name of kind k now belongs to member ("":
// deleted, or carrying no member's label). It returns the members whose
// count changed: none, one, or two when a record changed hands.
func (t *tally) set(k Kind, name, member string) []string {
	old, had := t.owner[k][name]
	if had && old == member || !had && member == "" {
		return nil
	}
	var changed []string
	if had {
		c := t.counts[old]
		c[k]--
		if *c == (Counts{}) {
			delete(t.counts, old)
		}
		delete(t.owner[k], name)
		changed = append(changed, old)
	}
	if member != "" {
		c := t.counts[member]
		if c == nil {
			c = &Counts{}
			t.counts[member] = c
		}
		c[k]++
		t.owner[k][name] = member
		changed = append(changed, member)
	}
	return changed
}

// get is member's counts, zero when it holds no record.
func (t *tally) get(member string) Counts {
	if c := t.counts[member]; c != nil {
		return *c
	}
	return Counts{}
}
