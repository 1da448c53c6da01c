package dnsserver

import "maps"

// A rebuild after one change used to clone the whole service map: at
// 100,000 services that is 3.7 MB of garbage and most of the rebuild's
// time for a change to one name, and under churn that garbage is what
// grows the heap between collections. The map is therefore split in
// shards by a hash of the key; indexes share unchanged shards (they are
// never written once published) and a rebuild copies only the shards of
// the services it recompiles.

// serviceShards is a power of two; at 100,000 services a shard holds
// about 400, so a change copies a few kilobytes.
const serviceShards = 256

// serviceMap maps the lowercase wire form of <svc>.<ns> to its service.
type serviceMap struct {
	shards [serviceShards]map[string]*service
	n      int
}

// shardOf is FNV-1a over the key: cheap for keys of a few dozen bytes,
// and it takes the query's bytes without converting them.
func shardOf[K string | []byte](key K) int {
	h := uint32(2166136261)
	for i := range len(key) {
		h = (h ^ uint32(key[i])) * 16777619
	}
	return int(h % serviceShards)
}

// get finds a service by the query's bytes without allocating.
func (m *serviceMap) get(key []byte) *service {
	return m.shards[shardOf(key)][string(key)]
}

func (m *serviceMap) len() int {
	if m == nil {
		return 0
	}
	return m.n
}

// edit returns a copy of m to change: it shares every shard with m until
// set or delete first writes one.
func (m *serviceMap) edit() *serviceEdit {
	e := &serviceEdit{m: &serviceMap{}}
	if m != nil {
		*e.m = *m
	}
	return e
}

// serviceEdit is a serviceMap being built from a published one.
type serviceEdit struct {
	m      *serviceMap
	copied [serviceShards]bool
}

func (e *serviceEdit) shard(key string) map[string]*service {
	i := shardOf(key)
	if !e.copied[i] {
		if e.m.shards[i] == nil {
			e.m.shards[i] = map[string]*service{}
		} else {
			e.m.shards[i] = maps.Clone(e.m.shards[i])
		}
		e.copied[i] = true
	}
	return e.m.shards[i]
}

func (e *serviceEdit) lookup(key string) *service { return e.m.shards[shardOf(key)][key] }

func (e *serviceEdit) set(key string, s *service) {
	sh := e.shard(key)
	if _, ok := sh[key]; !ok {
		e.m.n++
	}
	sh[key] = s
}

func (e *serviceEdit) delete(key string) {
	sh := e.shard(key)
	if _, ok := sh[key]; ok {
		e.m.n--
		delete(sh, key)
	}
}
