package agent

import "golang.org/x/sync/errgroup"

// sliceWriters bounds the EndpointSlice writes one reconcile has in flight.
// The slices of a service are independent objects: written one after the
// other, a change to an import reached its MCS slice and its derived
// Service's slice (the one kube-proxy programs from) a write apart, in
// whichever order the plan's map gave. A few at once keep a resync of an
// import of many clusters from holding the apiserver alone.
const sliceWriters = 4

// inParallel calls fn for every item, at most sliceWriters at a time, and
// returns the first error once all calls have returned.
func inParallel[T any](items []T, fn func(T) error) error {
	if len(items) == 1 {
		return fn(items[0])
	}
	var g errgroup.Group
	g.SetLimit(sliceWriters)
	for _, it := range items {
		g.Go(func() error { return fn(it) })
	}
	return g.Wait()
}
