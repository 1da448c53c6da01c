package server

import (
	"context"
	"sort"
	"sync"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
)

// viewCache holds one snapshot per view in go-control-plane's snapshot
// cache. Each type keeps its own version, raised only when that type's
// resources change, so a new cluster does not re-send every listener.
//
// The cache is not in ADS mode: in that mode go-control-plane answers a
// request only when every name in it exists, so one unknown dial target
// in a gRPC process would stall all its others. Outside it, the known
// subset is sent and gRPC treats the rest as absent at once.
type viewCache struct {
	cache cachev3.SnapshotCache

	mu      sync.Mutex
	counter uint64
	current map[View]*cachev3.Snapshot
}

func newViewCache(hash cachev3.NodeHash) *viewCache {
	return &viewCache{
		cache:   cachev3.NewSnapshotCache(false, hash, nil),
		current: map[View]*cachev3.Snapshot{},
	}
}

// set installs res as view v and returns the types whose content changed.
func (c *viewCache) set(ctx context.Context, v View, res map[resource.Type][]types.Resource) ([]string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.current[v]
	next := &cachev3.Snapshot{}
	var changed []string
	if old != nil {
		next.Resources = old.Resources
	}
	typeURLs := make([]string, 0, len(res))
	for t := range res {
		typeURLs = append(typeURLs, t)
	}
	if old != nil { // a type that disappeared from res is emptied
		for i, r := range old.Resources {
			t, err := cachev3.GetResponseTypeURL(types.ResponseType(i))
			if err == nil && r.Items != nil && res[t] == nil {
				typeURLs = append(typeURLs, t)
			}
		}
	}
	sort.Strings(typeURLs)
	for _, t := range typeURLs {
		idx := cachev3.GetResponseType(t)
		if idx == types.UnknownType {
			continue
		}
		if old != nil && sameResources(old.Resources[idx].Items, res[t]) {
			continue
		}
		c.counter++
		next.Resources[idx] = cachev3.NewResources(version(c.counter), res[t])
		changed = append(changed, t)
	}
	if old != nil && len(changed) == 0 {
		return nil, nil
	}
	// Types never set get an empty group, so a node asking for them is
	// answered (with nothing) instead of waiting.
	for i := range next.Resources {
		if next.Resources[i].Items == nil {
			next.Resources[i] = cachev3.NewResources("0", nil)
		}
	}
	if err := c.cache.SetSnapshot(ctx, string(v), next); err != nil {
		return nil, err
	}
	c.current[v] = next
	return changed, nil
}

func sameResources(old map[string]types.ResourceWithTTL, next []types.Resource) bool {
	if len(old) != len(next) {
		return false
	}
	for _, r := range next {
		o, ok := old[cachev3.GetResourceName(r)]
		if !ok {
			return false
		}
		if o.Resource != r && !proto.Equal(o.Resource, r) {
			return false
		}
	}
	return true
}

func (c *viewCache) resources(v View) map[resource.Type][]types.Resource {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[resource.Type][]types.Resource{}
	snap := c.current[v]
	if snap == nil {
		return out
	}
	for i, r := range snap.Resources {
		t, err := cachev3.GetResponseTypeURL(types.ResponseType(i))
		if err != nil || len(r.Items) == 0 {
			continue
		}
		names := make([]string, 0, len(r.Items))
		for n := range r.Items {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			out[t] = append(out[t], r.Items[n].Resource)
		}
	}
	return out
}
