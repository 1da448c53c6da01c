package dnsserver

import (
	"maps"
	"net/netip"
	"strings"
	"sync"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
)

type svcID struct{ ns, name string }

// Builder keeps what the index is made of and builds Indexes, recompiling
// only the services whose inputs changed since the last Build. It keeps a
// compact input per object (inputs.go), never the objects themselves. It
// is safe for concurrent use.
type Builder struct {
	cfg     Config
	nsAddrs []netip.Addr

	mu      sync.Mutex
	imports map[svcID]*importIn
	slices  map[svcID]map[string]*sliceIn
	// sliceOwner remembers which service a slice counted for, so a slice
	// whose service-name label changes leaves its old service.
	sliceOwner map[svcID]svcID
	dirty      map[svcID]bool
	last       *Index
	serial     uint32
}

// NewBuilder returns a Builder for cfg. nsAddrs are the addresses the
// server is reachable at, served as ns.dns.<zone> (the apex NS target);
// none leaves that name without addresses.
func NewBuilder(cfg Config, nsAddrs []netip.Addr) (*Builder, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Builder{
		cfg:        c,
		nsAddrs:    nsAddrs,
		imports:    map[svcID]*importIn{},
		slices:     map[svcID]map[string]*sliceIn{},
		sliceOwner: map[svcID]svcID{},
		dirty:      map[svcID]bool{},
	}, nil
}

// Config is the Builder's configuration with defaults filled in.
func (b *Builder) Config() Config { return b.cfg }

// SetImport adds or replaces a ServiceImport. The Builder keeps none of
// it but what the index reads.
func (b *Builder) SetImport(si *mcsv1beta1.ServiceImport) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.setImport(si)
}

func (b *Builder) setImport(si *mcsv1beta1.ServiceImport) {
	id, in := svcID{si.Namespace, si.Name}, importInput(si)
	if old := b.imports[id]; old != nil && old.equal(in) {
		return // a change the index does not read (status, labels)
	}
	b.imports[id] = in
	b.dirty[id] = true
}

// DeleteImport removes a ServiceImport.
func (b *Builder) DeleteImport(namespace, name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.deleteImport(svcID{namespace, name})
}

func (b *Builder) deleteImport(id svcID) {
	if _, ok := b.imports[id]; ok {
		delete(b.imports, id)
		b.dirty[id] = true
	}
}

// ReplaceImports makes imports the whole set of ServiceImports, as an
// informer's relist does: those not in it are removed.
func (b *Builder) ReplaceImports(imports []*mcsv1beta1.ServiceImport) {
	b.mu.Lock()
	defer b.mu.Unlock()
	keep := make(map[svcID]bool, len(imports))
	for _, si := range imports {
		keep[svcID{si.Namespace, si.Name}] = true
		b.setImport(si)
	}
	for id := range b.imports {
		if !keep[id] {
			b.deleteImport(id)
		}
	}
}

// SetSlice adds or replaces an MCS EndpointSlice; it counts for the
// service its multicluster.kubernetes.io/service-name label names. The
// Builder keeps none of it but what the index reads.
func (b *Builder) SetSlice(es *discoveryv1.EndpointSlice) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.setSlice(es)
}

func (b *Builder) setSlice(es *discoveryv1.EndpointSlice) {
	key := svcID{es.Namespace, es.Name}
	svc := es.Labels[mcsv1beta1.LabelServiceName]
	in := sliceInput(es)
	if id, ok := b.sliceOwner[key]; ok && id.name == svc {
		if old := b.slices[id][es.Name]; old.equal(in) {
			return // a change the index does not read
		}
	}
	b.removeSlice(key)
	if svc == "" {
		return
	}
	id := svcID{es.Namespace, svc}
	if b.slices[id] == nil {
		b.slices[id] = map[string]*sliceIn{}
	}
	b.slices[id][es.Name] = in
	b.sliceOwner[key] = id
	b.dirty[id] = true
}

// DeleteSlice removes an EndpointSlice.
func (b *Builder) DeleteSlice(namespace, name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.removeSlice(svcID{namespace, name})
}

// ReplaceSlices makes slices the whole set of EndpointSlices, as an
// informer's relist does: those not in it are removed.
func (b *Builder) ReplaceSlices(slices []*discoveryv1.EndpointSlice) {
	b.mu.Lock()
	defer b.mu.Unlock()
	keep := make(map[svcID]bool, len(slices))
	for _, es := range slices {
		keep[svcID{es.Namespace, es.Name}] = true
		b.setSlice(es)
	}
	for key := range b.sliceOwner {
		if !keep[key] {
			b.removeSlice(key)
		}
	}
}

func (b *Builder) removeSlice(key svcID) {
	id, ok := b.sliceOwner[key]
	if !ok {
		return
	}
	delete(b.sliceOwner, key)
	delete(b.slices[id], key.name)
	if len(b.slices[id]) == 0 {
		delete(b.slices, id)
	}
	b.dirty[id] = true
}

// Dirty reports whether objects changed since the last Build.
func (b *Builder) Dirty() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.dirty) > 0 || b.last == nil
}

// Build returns an Index of the current objects. Services whose objects
// did not change keep their packed answers from the previous Index.
func (b *Builder) Build() *Index {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.last != nil && len(b.dirty) == 0 {
		return b.last
	}
	// The serial follows the clock so that it also grows across restarts;
	// it grows by at least one per change.
	b.serial = max(b.serial+1, uint32(time.Now().Unix()))
	ix := &Index{cfg: &b.cfg, serial: b.serial}
	var svcs *serviceEdit
	if b.last != nil {
		svcs = b.last.services.edit()
		ix.namespaces = maps.Clone(b.last.namespaces)
		ix.clusterIDs = maps.Clone(b.last.clusterIDs)
		ix.names = b.last.names
	} else {
		svcs = (*serviceMap)(nil).edit()
		ix.namespaces, ix.clusterIDs = map[string]int{}, map[string]int{}
	}
	for id := range b.dirty {
		// The previous index is the record of what each service
		// contributed, so it is what gets taken out.
		key := wireKey(id.name + "." + id.ns + ".")
		ix.remove(svcs, key, id, svcs.lookup(key))
		if !validName(id.name) || !validName(id.ns) || strings.Contains(id.name+id.ns, ".") {
			continue // not a name this zone can hold
		}
		var slices []*sliceIn
		for _, es := range b.slices[id] {
			slices = append(slices, es)
		}
		if s := compileService(&b.cfg, id, b.imports[id], slices); s != nil {
			ix.add(svcs, key, id, s)
		}
	}
	ix.services = svcs.m
	// A new map rather than clear: a cleared map keeps the room of the
	// largest change, which after the first sync is every service.
	b.dirty = map[svcID]bool{}
	ix.main = newZone(&b.cfg, b.cfg.Zone, b.serial, b.nsAddrs, true)
	if b.cfg.ClusterZone != "" {
		ix.cluster = newZone(&b.cfg, b.cfg.ClusterZone, b.serial, b.nsAddrs, false)
	}
	b.last = ix
	return ix
}

func (ix *Index) add(svcs *serviceEdit, key string, id svcID, s *service) {
	svcs.set(key, s)
	ix.namespaces[wireKey(id.ns+".")]++
	for _, c := range s.clusters {
		ix.clusterIDs[c.key]++
	}
	ix.names += s.names
}

func (ix *Index) remove(svcs *serviceEdit, key string, id svcID, s *service) {
	if s == nil {
		return
	}
	svcs.delete(key)
	ns := wireKey(id.ns + ".")
	if ix.namespaces[ns]--; ix.namespaces[ns] <= 0 {
		delete(ix.namespaces, ns)
	}
	for _, c := range s.clusters {
		if ix.clusterIDs[c.key]--; ix.clusterIDs[c.key] <= 0 {
			delete(ix.clusterIDs, c.key)
		}
	}
	ix.names -= s.names
}
