package dnsserver

import (
	"bytes"
	"encoding/binary"
	"net/netip"

	"github.com/miekg/dns"
)

// Index is one immutable view of every name the server answers. A new
// Index replaces the old one atomically; queries read whichever they
// loaded without locks.
type Index struct {
	cfg    *Config
	serial uint32
	main   *zone
	// cluster is the opt-in per-cluster zone, nil when off.
	cluster *zone
	// services is keyed by the lowercase wire form of <svc>.<ns>.
	services *serviceMap
	// namespaces counts the services per namespace (keyed by the wire
	// form of the namespace label): <ns>.svc.<zone> exists while one does.
	namespaces map[string]int
	// clusterIDs counts the per-cluster names per cluster id (wire form).
	clusterIDs map[string]int
	names      int
}

// zone is one zone's apex data.
type zone struct {
	name string
	wire []byte // lowercase wire form, root byte included
	apex *node
	// soaTail is the apex SOA RR after its owner name (type, class, TTL,
	// rdlength, rdata): negative answers write a compression pointer to
	// the zone's labels in the question, then this.
	soaTail []byte
	// version and nsNode are the main zone's dns-version and
	// ns.dns.<zone> names; ent answers the empty non-terminals.
	version, nsNode, ent *node
}

// Serial is the SOA serial of this index: it grows with every change.
func (ix *Index) Serial() uint32 { return ix.serial }

// Names is how many owner names the index answers for.
func (ix *Index) Names() int { return ix.names }

// Services is how many services the index holds.
func (ix *Index) Services() int { return ix.services.len() }

func newZone(cfg *Config, name string, serial uint32, nsAddrs []netip.Addr, main bool) *zone {
	z := &zone{name: name, wire: []byte(wireKey(name) + "\x00"), ent: &node{}}
	soa := &dns.SOA{
		Hdr:     hdr(name, dns.TypeSOA, cfg.TTL),
		Ns:      "ns.dns." + name,
		Mbox:    "hostmaster." + name,
		Serial:  serial,
		Refresh: 7200, Retry: 1800, Expire: 86400,
		Minttl: cfg.TTL,
	}
	buf := make([]byte, 512)
	off, err := dns.PackRR(soa, buf, 0, nil, false)
	if err == nil {
		z.soaTail = append([]byte(nil), buf[len(z.wire):off]...)
	}
	p := packer{cfg: cfg}
	fixed := func(rrs ...dns.RR) genFunc {
		return func(sel []int, _ bool) ([]dns.RR, []dns.RR) { return rrs, nil }
	}
	nsName := "ns.dns." + name
	z.apex = &node{
		soa: p.answer(name, dns.TypeSOA, 1, fixed(soa)),
		ns:  p.answer(name, dns.TypeNS, 1, fixed(&dns.NS{Hdr: hdr(name, dns.TypeNS, cfg.TTL), Ns: nsName})),
	}
	z.nsNode = &node{
		a:    p.answer(nsName, dns.TypeA, 1, fixed(addrRRs(nsName, filter(nsAddrs, true), cfg.TTL)...)),
		aaaa: p.answer(nsName, dns.TypeAAAA, 1, fixed(addrRRs(nsName, filter(nsAddrs, false), cfg.TTL)...)),
	}
	if main {
		v := "dns-version." + name
		z.version = &node{txt: p.answer(v, dns.TypeTXT, 1, fixed(&dns.TXT{Hdr: hdr(v, dns.TypeTXT, dnsVersionTTL), Txt: []string{DNSVersion}}))}
	}
	return z
}

func filter(as []netip.Addr, v4 bool) []netip.Addr {
	var out []netip.Addr
	for _, a := range as {
		if a.Unmap().Is4() == v4 {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// result of a lookup.
type result uint8

const (
	resRefused result = iota // outside every zone
	resNXDomain
	resNode
)

// lookup finds the node of a lowercase wire name; offs holds the start
// of each label.
func (ix *Index) lookup(lw []byte, offs []uint8) (result, *zone, *node) {
	z, nl := ix.main, inZone(lw, offs, ix.main)
	if nl < 0 && ix.cluster != nil {
		z, nl = ix.cluster, inZone(lw, offs, ix.cluster)
	}
	if nl < 0 {
		return resRefused, nil, nil
	}
	if nl == 0 {
		return resNode, z, z.apex
	}
	label := func(i int) []byte { return lw[offs[i]+1 : offs[i+1]] }
	end := len(lw) - len(z.wire) // start of the zone's labels
	bound := func(i int) int {
		if i == nl {
			return end
		}
		return int(offs[i])
	}
	if z == ix.cluster {
		return ix.lookupCluster(lw, nl, label, bound, z)
	}
	last := label(nl - 1)
	switch {
	case nl == 1 && string(last) == "dns-version":
		return resNode, z, z.version
	case string(last) == "dns":
		if nl == 1 {
			return resNode, z, z.ent
		}
		if nl == 2 && string(label(0)) == "ns" {
			return resNode, z, z.nsNode
		}
	case string(last) == "svc":
		switch nl {
		case 1:
			return resNode, z, z.ent
		case 2:
			if ix.namespaces[string(lw[:bound(1)])] > 0 {
				return resNode, z, z.ent
			}
			return resNXDomain, z, nil
		}
		s := ix.services.get(lw[bound(nl-3):bound(nl-1)])
		if s == nil || s.apex == nil {
			return resNXDomain, z, nil
		}
		if nl == 3 {
			return resNode, z, s.apex
		}
		if n := s.sub.get(lw[:bound(nl-3)]); n != nil {
			return resNode, z, n
		}
	}
	return resNXDomain, z, nil
}

// lookupCluster resolves <svc>.<ns>.svc.<clusterid>.<cluster zone> and
// the empty non-terminals above it.
func (ix *Index) lookupCluster(lw []byte, nl int, label func(int) []byte, bound func(int) int, z *zone) (result, *zone, *node) {
	end := bound(nl)
	known := func(from int) bool { return ix.clusterIDs[string(lw[bound(from):end])] > 0 }
	switch {
	case known(0):
		return resNode, z, z.ent
	case nl >= 2 && string(label(0)) == "svc" && known(1):
		return resNode, z, z.ent
	case nl >= 3 && string(label(1)) == "svc" && known(2) && ix.namespaces[string(lw[:bound(1)])] > 0:
		return resNode, z, z.ent
	case nl >= 4 && string(label(2)) == "svc" && known(3):
		s := ix.services.get(lw[:bound(2)])
		if s != nil && s.perCluster {
			if n := s.clusters.get(lw[bound(3):end]); n != nil {
				return resNode, z, n
			}
		}
	}
	return resNXDomain, z, nil
}

// inZone returns how many labels of lw precede zone z, or -1 when lw is
// not in z.
func inZone(lw []byte, offs []uint8, z *zone) int {
	if len(lw) < len(z.wire) || !bytes.Equal(lw[len(lw)-len(z.wire):], z.wire) {
		return -1
	}
	start := len(lw) - len(z.wire)
	for i, o := range offs {
		if int(o) == start {
			return i
		}
	}
	return -1 // the match started inside a label
}

var be = binary.BigEndian
