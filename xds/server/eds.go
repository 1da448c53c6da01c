package server

import (
	"context"
	"errors"
	"sort"
	"strconv"
	"sync"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// edsCache serves ClusterLoadAssignments over state-of-the-world ADS at a
// cost independent of how many assignments a client subscribes to.
//
// go-control-plane's LinearCache sends only what changed, but every
// request (each ACK of a SotW client carries its whole subscription)
// re-walks and re-indexes every subscribed name: with 10,000 names that
// is most of the server's CPU per endpoint change (bench/xds). Here each
// stream keeps its subscription, what it was sent and what changed since;
// an ACK of an unchanged subscription only re-arms the stream, and a
// change touches only the streams subscribed to it. Each assignment is
// marshalled once per version, whatever the number of clients.
//
// Delta clients are served by a LinearCache kept in step: the delta
// protocol sends subscription changes, not whole lists.
type edsCache struct {
	delta    *cachev3.LinearCache
	streamOf func(*cachev3.Request) (int64, bool)

	mu          sync.Mutex
	version     uint64
	entries     map[string]*edsEntry
	subscribers map[string]map[int64]*edsStream
	streams     map[int64]*edsStream
}

type edsEntry struct {
	res types.Resource
	any *anypb.Any // marshalled on first send
}

type edsStream struct {
	id      int64
	names   map[string]struct{}
	pending map[string]struct{} // subscribed names not sent since they changed
	watch   *edsWatch
}

type edsWatch struct {
	req *cachev3.Request
	ch  chan cachev3.Response
}

func newEDSCache(delta *cachev3.LinearCache, streamOf func(*cachev3.Request) (int64, bool)) *edsCache {
	return &edsCache{
		delta: delta, streamOf: streamOf,
		entries:     map[string]*edsEntry{},
		subscribers: map[string]map[int64]*edsStream{},
		streams:     map[int64]*edsStream{},
	}
}

// update changes assignments (nil deletes) and answers the waiting
// streams subscribed to them.
func (c *edsCache) update(changed map[string]types.Resource) error {
	upd := map[string]types.Resource{}
	var del []string
	c.mu.Lock()
	c.version++
	touched := map[*edsStream]bool{}
	for name, r := range changed {
		if r == nil {
			// SotW cannot say an assignment is gone; its cluster leaving
			// CDS is what clients act on.
			delete(c.entries, name)
			del = append(del, name)
			continue
		}
		upd[name] = r
		c.entries[name] = &edsEntry{res: r}
		for _, st := range c.subscribers[name] {
			st.pending[name] = struct{}{}
			touched[st] = true
		}
	}
	for st := range touched {
		if st.watch != nil {
			c.respond(st)
		}
	}
	c.mu.Unlock()
	return c.delta.UpdateResources(upd, del)
}

// CreateWatch arms a stream's watch, answering at once what it has not
// seen.
func (c *edsCache) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, ch chan cachev3.Response) (func(), error) {
	id, ok := c.streamOf(req)
	if !ok || len(req.GetResourceNames()) == 0 {
		// Unknown stream or a wildcard request: the general cache handles it.
		return c.delta.CreateWatch(req, sub, ch)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.streams[id]
	if st == nil {
		st = &edsStream{id: id, names: map[string]struct{}{}, pending: map[string]struct{}{}}
		c.streams[id] = st
	}
	c.resubscribe(st, req.GetResourceNames())
	if req.GetVersionInfo() == "" {
		// A client without state (a new stream, or a reconnect) gets all.
		for n := range st.names {
			if c.entries[n] != nil {
				st.pending[n] = struct{}{}
			}
		}
	}
	w := &edsWatch{req: req, ch: ch}
	st.watch = w
	if len(st.pending) > 0 {
		c.respond(st)
		return func() {}, nil
	}
	return func() {
		c.mu.Lock()
		if st.watch == w {
			st.watch = nil
		}
		c.mu.Unlock()
	}, nil
}

// resubscribe makes st's names equal names, updating the index only for
// the difference; an unchanged list costs one lookup per name.
func (c *edsCache) resubscribe(st *edsStream, names []string) {
	same := len(names) == len(st.names)
	if same {
		for _, n := range names {
			if _, ok := st.names[n]; !ok {
				same = false
				break
			}
		}
	}
	if same {
		return
	}
	next := make(map[string]struct{}, len(names))
	for _, n := range names {
		next[n] = struct{}{}
		if _, had := st.names[n]; had {
			continue
		}
		subs := c.subscribers[n]
		if subs == nil {
			subs = map[int64]*edsStream{}
			c.subscribers[n] = subs
		}
		subs[st.id] = st
		if c.entries[n] != nil {
			st.pending[n] = struct{}{} // newly subscribed: send it
		}
	}
	for n := range st.names {
		if _, keep := next[n]; !keep {
			delete(c.subscribers[n], st.id)
			if len(c.subscribers[n]) == 0 {
				delete(c.subscribers, n)
			}
			delete(st.pending, n)
		}
	}
	st.names = next
}

// respond sends st's pending assignments on its watch. c.mu is held.
func (c *edsCache) respond(st *edsStream) {
	names := make([]string, 0, len(st.pending))
	for n := range st.pending {
		if c.entries[n] != nil {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	resp := &discoveryv3.DiscoveryResponse{VersionInfo: strconv.FormatUint(c.version, 10), TypeUrl: resource.EndpointType}
	for _, n := range names {
		e := c.entries[n]
		if e.any == nil {
			b, err := proto.MarshalOptions{Deterministic: true}.Marshal(e.res)
			if err != nil {
				continue // cannot happen for a validated assignment
			}
			e.any = &anypb.Any{TypeUrl: resource.EndpointType, Value: b}
		}
		resp.Resources = append(resp.Resources, e.any)
	}
	w := st.watch
	st.watch = nil
	st.pending = map[string]struct{}{}
	// The channel holds one response per type and a stream has one watch
	// per type open, so this never blocks.
	w.ch <- &cachev3.PassthroughResponse{Request: w.req, DiscoveryResponse: resp}
}

// forget drops a closed stream.
func (c *edsCache) forget(id int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.streams[id]
	if st == nil {
		return
	}
	for n := range st.names {
		delete(c.subscribers[n], id)
		if len(c.subscribers[n]) == 0 {
			delete(c.subscribers, n)
		}
	}
	delete(c.streams, id)
}

func (c *edsCache) CreateDeltaWatch(req *cachev3.DeltaRequest, sub cachev3.Subscription, ch chan cachev3.DeltaResponse) (func(), error) {
	return c.delta.CreateDeltaWatch(req, sub, ch)
}

func (c *edsCache) Fetch(context.Context, *cachev3.Request) (cachev3.Response, error) {
	return nil, errors.New("fetching endpoints over REST is not served")
}

func (c *edsCache) resources() map[string]types.Resource {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]types.Resource, len(c.entries))
	for n, e := range c.entries {
		out[n] = e.res
	}
	return out
}
