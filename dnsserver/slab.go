package dnsserver

import (
	"slices"
	"strings"
)

// Memory at 100,000 services is dominated by per-name allocations, not by
// the bytes answered: each packed response is its own allocation, sized by
// the packer's uncompressed estimate, and the three transports' variants of
// a small answer are three copies of the same bytes. A compiled service is
// therefore compacted once (compact): every distinct packed response of
// the service is copied into one byte slab and the answers point into it,
// identical variants sharing their bytes, and an answer whose UDP variants
// are all the whole answer keeps only that; the names under the service are
// a sorted slice instead of a map. The index keeps its shape (built once
// per change, swapped atomically, services shared between indexes), and
// the answer path still copies one contiguous response.

// named is one owner name under a service, keyed by the lowercase wire
// form of its leading labels.
type named struct {
	key  string
	node *node
}

// names is a sorted set of named nodes; a service has a handful, so a
// binary search over a slice beats a map in both memory and time.
type names []named

// get finds the node of a wire key; it takes the query's bytes as they
// are, so a lookup allocates nothing.
func (ns names) get(key []byte) *node {
	lo, hi := 0, len(ns)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		switch c := compareKey(ns[mid].key, key); {
		case c == 0:
			return ns[mid].node
		case c < 0:
			lo = mid + 1
		default:
			hi = mid
		}
	}
	return nil
}

// compareKey is strings.Compare(a, string(b)) without the conversion.
func compareKey(a string, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			if a[i] < b[i] {
				return -1
			}
			return 1
		}
	}
	return len(a) - len(b)
}

// ent is the node of every empty non-terminal: no data of its own, so one
// immutable node serves them all.
var ent = &node{}

func namesOf(m map[string]*node) names {
	if len(m) == 0 {
		return nil
	}
	out := make(names, 0, len(m))
	for k, n := range m {
		out = append(out, named{k, n})
	}
	slices.SortFunc(out, func(a, b named) int { return strings.Compare(a.key, b.key) })
	return out
}

// compact copies every distinct packed response of the nodes into one
// slab and points their answers at it.
func compact(nodes ...*node) {
	var all []*answer
	for _, n := range nodes {
		if n == nil {
			continue
		}
		for _, a := range []*answer{n.a, n.aaaa, n.srv, n.txt, n.soa, n.ns} {
			if a != nil {
				all = append(all, a)
			}
		}
	}
	size, seen := 0, map[string]bool{}
	visit := func(b []byte) {
		if !seen[string(b)] {
			seen[string(b)] = true
			size += len(b)
		}
	}
	for _, a := range all {
		visit(a.tcp)
		if a.sized != nil {
			for _, b := range a.sized.small {
				visit(b)
			}
			for _, b := range a.sized.large {
				visit(b)
			}
		}
	}
	slab := make([]byte, 0, size)
	at := make(map[string][]byte, len(seen))
	place := func(b []byte) []byte {
		if p, ok := at[string(b)]; ok {
			return p
		}
		start := len(slab)
		slab = append(slab, b...)
		p := slab[start:len(slab):len(slab)]
		at[string(b)] = p
		return p
	}
	for _, a := range all {
		a.tcp = place(a.tcp)
		if a.sized == nil {
			continue
		}
		if whole := [][]byte{a.tcp}; equalVariants(a.sized.small, whole) && equalVariants(a.sized.large, whole) {
			a.sized = nil // every transport and size gets the whole answer
			continue
		}
		a.sized.small = placeAll(a.sized.small, place)
		if equalVariants(a.sized.large, a.sized.small) {
			a.sized.large = a.sized.small // one header slice for both sizes
		} else {
			a.sized.large = placeAll(a.sized.large, place)
		}
	}
}

func placeAll(v [][]byte, place func([]byte) []byte) [][]byte {
	out := make([][]byte, len(v))
	for i, b := range v {
		out[i] = place(b)
	}
	return out
}

func equalVariants(x, y [][]byte) bool {
	return slices.EqualFunc(x, y, func(a, b []byte) bool { return string(a) == string(b) })
}
