package dnsserver

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"

	"github.com/miekg/dns"
)

// service is one ServiceImport compiled into packed answers. It is
// immutable once built, so indexes share it until the service changes.
type service struct {
	// apex answers <svc>.<ns>.svc.<zone>; nil when the name must not exist
	// (a headless service with no ready endpoint), which makes every name
	// under it NXDOMAIN too.
	apex *node
	// sub holds the names under the service, keyed by the lowercase wire
	// form of the labels before <svc>.<ns>: _port._proto, _proto,
	// hostname.clusterid and clusterid (the last two only as empty
	// non-terminals or per-host names, never with data of their own).
	sub names
	// clusters holds the opt-in per-cluster form, keyed by the lowercase
	// wire form of the cluster id; nil when that form is off.
	clusters names
	// perCluster is true when the per-cluster form is on.
	perCluster bool
	// names counts the owner names this service contributes.
	names int
}

// node is one owner name. A nil answer for a type means NODATA.
type node struct {
	a, aaaa, srv, txt, soa, ns *answer
}

// pick returns the answer for qtype, nil for NODATA. ANY gets one RRset
// (RFC 8482), never the union.
func (n *node) pick(qtype uint16) *answer {
	switch qtype {
	case dns.TypeA:
		return n.a
	case dns.TypeAAAA:
		return n.aaaa
	case dns.TypeSRV:
		return n.srv
	case dns.TypeTXT:
		return n.txt
	case dns.TypeSOA:
		return n.soa
	case dns.TypeNS:
		return n.ns
	case dns.TypeANY:
		for _, a := range []*answer{n.a, n.aaaa, n.srv, n.txt, n.soa} {
			if a != nil {
				return a
			}
		}
	}
	return nil
}

// unit is one endpoint (a hostname in a cluster) of a headless service,
// with its addresses of both families; the subset rule chooses units, so
// that A and AAAA answers of a truncated set name the same endpoints.
type unit struct {
	cluster, host string
	target        string // <host>.<cluster>.<svc>.<ns>.svc.<zone>
	v4, v6        []netip.Addr
	ports         []portIn
}

type srvKey struct {
	port   uint16
	target string
}

// compileService packs every answer of service id. imp is nil when the
// ServiceImport does not exist; slices are its MCS EndpointSlices.
func compileService(cfg *Config, id svcID, imp *importIn, slices []*sliceIn) *service {
	if imp == nil {
		return nil
	}
	ns, name := strings.ToLower(id.ns), strings.ToLower(id.name)
	owner := name + "." + ns + ".svc." + cfg.Zone
	units := readyUnits(slices, owner)
	s := &service{}
	b := &serviceBuild{sub: map[string]*node{}}
	p := packer{cfg: cfg}
	if imp.headless {
		compileHeadless(&p, s, b, owner, units)
	} else {
		compileClusterSetIP(&p, s, b, owner, imp)
	}
	if cfg.ClusterZone != "" {
		s.perCluster = true
		compilePerCluster(&p, s, b, name+"."+ns+".svc.", units)
	}
	s.sub, s.clusters = namesOf(b.sub), namesOf(b.clusters)
	nodes := []*node{s.apex}
	for _, n := range s.sub {
		nodes = append(nodes, n.node)
	}
	for _, n := range s.clusters {
		nodes = append(nodes, n.node)
	}
	compact(nodes...)
	return s
}

// serviceBuild holds a service's names while it is compiled, before they
// are frozen into sorted slices.
type serviceBuild struct {
	sub, clusters map[string]*node
}

func compileClusterSetIP(p *packer, s *service, b *serviceBuild, owner string, imp *importIn) {
	var v4, v6 []netip.Addr
	for _, a := range imp.ips {
		if a.Is4() {
			v4 = append(v4, a)
		} else {
			v6 = append(v6, a)
		}
	}
	addrs := func(as []netip.Addr) []dns.RR { return addrRRs(owner, as, p.cfg.TTL) }
	glue := append(addrs(v4), addrs(v6)...)
	one := func(rrs, extra []dns.RR) genFunc {
		return func(sel []int, withExtra bool) ([]dns.RR, []dns.RR) {
			if len(sel) == 0 {
				return nil, nil
			}
			if withExtra {
				return rrs, extra
			}
			return rrs, nil
		}
	}
	apex := &node{}
	apex.a = p.answer(owner, dns.TypeA, 1, one(addrs(v4), nil))
	apex.aaaa = p.answer(owner, dns.TypeAAAA, 1, one(addrs(v6), nil))
	// Bare-name SRV (what the mcs-api conformance suite asks): every port,
	// one RR per distinct port number.
	var bare []dns.RR
	seen := map[srvKey]bool{}
	named := map[string][]dns.RR{}
	for _, pt := range imp.ports {
		rr := srvRR(owner, uint16(pt.port), owner, p.cfg.TTL)
		if k := (srvKey{uint16(pt.port), owner}); !seen[k] {
			seen[k] = true
			bare = append(bare, rr)
		}
		if label, ok := srvLabels(pt.name, pt.proto); ok {
			if !slices.ContainsFunc(named[label], func(r dns.RR) bool { return r.(*dns.SRV).Port == uint16(pt.port) }) {
				named[label] = append(named[label], srvRR(label+owner, uint16(pt.port), owner, p.cfg.TTL))
			}
		}
	}
	apex.srv = p.answer(owner, dns.TypeSRV, 1, one(bare, glue))
	for label, rrs := range named {
		b.sub[wireKey(label)] = &node{srv: p.answer(label+owner, dns.TypeSRV, 1, one(rrs, glue))}
		b.addENT(protoLabel(label))
	}
	s.apex = apex
	s.names = 1 + len(b.sub)
}

func compileHeadless(p *packer, s *service, b *serviceBuild, owner string, units []unit) {
	if len(units) == 0 {
		return // no ready endpoint: the spec's NXDOMAIN
	}
	ttl := p.cfg.TTL
	genAddr := func(v6 bool) genFunc {
		return func(sel []int, _ bool) ([]dns.RR, []dns.RR) {
			var rrs []dns.RR
			for _, i := range sel {
				if v6 {
					rrs = append(rrs, addrRRs(owner, units[i].v6, ttl)...)
				} else {
					rrs = append(rrs, addrRRs(owner, units[i].v4, ttl)...)
				}
			}
			return rrs, nil
		}
	}
	apex := &node{}
	apex.a, apex.aaaa = p.answerPair(owner, len(units), genAddr(false), genAddr(true))

	// SRV: the bare name gets every (endpoint, port); _port._proto gets
	// the endpoints that have that named port. Headless ports come from
	// the EndpointSlices (mcs-api#91).
	genSRV := func(label string) genFunc {
		return func(sel []int, extra bool) ([]dns.RR, []dns.RR) {
			var rrs, glue []dns.RR
			seen := map[srvKey]bool{}
			for _, i := range sel {
				u := units[i]
				used := false
				for _, pt := range u.ports {
					if !pt.hasPort {
						continue
					}
					if label != "" {
						l, ok := srvLabels(pt.name, pt.proto)
						if !ok || l != label {
							continue
						}
					}
					k := srvKey{uint16(pt.port), u.target}
					if seen[k] {
						continue
					}
					seen[k] = true
					used = true
					rrs = append(rrs, srvRR(label+owner, k.port, u.target, ttl))
				}
				if used && extra {
					glue = append(glue, addrRRs(u.target, u.v4, ttl)...)
					glue = append(glue, addrRRs(u.target, u.v6, ttl)...)
				}
			}
			return rrs, glue
		}
	}
	apex.srv = p.answer(owner, dns.TypeSRV, len(units), genSRV(""))
	s.apex = apex

	labels := map[string]bool{}
	for _, u := range units {
		for _, pt := range u.ports {
			if l, ok := srvLabels(pt.name, pt.proto); ok {
				labels[l] = true
			}
		}
	}
	for l := range labels {
		b.sub[wireKey(l)] = &node{srv: p.answer(l+owner, dns.TypeSRV, len(units), genSRV(l))}
		b.addENT(protoLabel(l))
	}
	for _, u := range units {
		one := func(v6 bool) genFunc {
			return func(sel []int, _ bool) ([]dns.RR, []dns.RR) {
				if len(sel) == 0 {
					return nil, nil
				}
				if v6 {
					return addrRRs(u.target, u.v6, ttl), nil
				}
				return addrRRs(u.target, u.v4, ttl), nil
			}
		}
		host := &node{}
		host.a = p.answer(u.target, dns.TypeA, 1, one(false))
		host.aaaa = p.answer(u.target, dns.TypeAAAA, 1, one(true))
		b.sub[wireKey(u.host+"."+u.cluster+".")] = host
		// <clusterid>.<svc>.<ns>: reserved by the spec. It exists only as
		// the empty non-terminal above the per-host names, so it answers
		// NODATA and never carries a record.
		b.addENT(u.cluster + ".")
	}
	s.names = 1 + len(b.sub)
}

// compilePerCluster builds the opt-in <svc>.<ns>.svc.<clusterid>.<cluster
// zone> names: the ready addresses one cluster's slices list.
func compilePerCluster(p *packer, s *service, b *serviceBuild, prefix string, units []unit) {
	b.clusters = map[string]*node{}
	byCluster := map[string][]unit{}
	for _, u := range units {
		byCluster[u.cluster] = append(byCluster[u.cluster], u)
	}
	for c, us := range byCluster {
		owner := prefix + c + "." + p.cfg.ClusterZone
		gen := func(v6 bool) genFunc {
			return func(sel []int, _ bool) ([]dns.RR, []dns.RR) {
				var rrs []dns.RR
				for _, i := range sel {
					if v6 {
						rrs = append(rrs, addrRRs(owner, us[i].v6, p.cfg.TTL)...)
					} else {
						rrs = append(rrs, addrRRs(owner, us[i].v4, p.cfg.TTL)...)
					}
				}
				return rrs, nil
			}
		}
		n := &node{}
		n.a, n.aaaa = p.answerPair(owner, len(us), gen(false), gen(true))
		b.clusters[wireKey(c+".")] = n
	}
	s.names += len(b.clusters)
}

func (b *serviceBuild) addENT(prefix string) {
	k := wireKey(prefix)
	if _, ok := b.sub[k]; !ok {
		b.sub[k] = ent
	}
}

// readyUnits groups the ready addresses of slices by (cluster, hostname),
// sorted, skipping slices without a usable source-cluster label.
func readyUnits(eps []*sliceIn, owner string) []unit {
	byKey := map[[2]string]*unit{}
	for _, es := range eps {
		if es.cluster == "" {
			continue
		}
		for _, ep := range es.endpoints {
			k := [2]string{es.cluster, ep.host}
			u := byKey[k]
			if u == nil {
				u = &unit{cluster: es.cluster, host: ep.host, target: ep.host + "." + es.cluster + "." + owner}
				if _, ok := dns.IsDomainName(u.target); !ok || len(u.target) > 253 {
					continue
				}
				byKey[k] = u
			}
			for _, a := range ep.addrs {
				if a.Is4() && !slices.Contains(u.v4, a) {
					u.v4 = append(u.v4, a)
				} else if a.Is6() && !slices.Contains(u.v6, a) {
					u.v6 = append(u.v6, a)
				}
			}
			u.ports = append(u.ports, es.ports...)
		}
	}
	units := make([]unit, 0, len(byKey))
	for _, u := range byKey {
		units = append(units, *u)
	}
	slices.SortFunc(units, func(a, b unit) int {
		return cmp.Or(cmp.Compare(a.cluster, b.cluster), cmp.Compare(a.host, b.host))
	})
	return units
}

// validName reports whether s is one or more DNS labels (a cluster id may
// be two, KEP-1645).
func validName(s string) bool {
	if s == "" || len(s) > 127 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if l == "" || len(l) > 63 {
			return false
		}
		for _, c := range []byte(l) {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// srvLabels returns "_<port>._<proto>." for a named port.
func srvLabels(name, proto string) (string, bool) {
	name = strings.ToLower(name)
	if name == "" || !validName(name) || strings.Contains(name, ".") {
		return "", false
	}
	if proto == "" {
		proto = "TCP"
	}
	return "_" + name + "._" + strings.ToLower(proto) + ".", true
}

// protoLabel returns "_<proto>." from "_<port>._<proto>.".
func protoLabel(l string) string {
	_, rest, _ := strings.Cut(l, ".")
	return rest
}

func addrRRs(owner string, as []netip.Addr, ttl uint32) []dns.RR {
	rrs := make([]dns.RR, 0, len(as))
	for _, a := range as {
		if a.Is4() {
			rrs = append(rrs, &dns.A{Hdr: hdr(owner, dns.TypeA, ttl), A: a.AsSlice()})
		} else {
			rrs = append(rrs, &dns.AAAA{Hdr: hdr(owner, dns.TypeAAAA, ttl), AAAA: a.AsSlice()})
		}
	}
	return rrs
}

// srvRR uses priority 0 and equal weights: the spec leaves both free and
// equal weights spread load evenly (RFC 2782).
func srvRR(owner string, port uint16, target string, ttl uint32) dns.RR {
	return &dns.SRV{Hdr: hdr(owner, dns.TypeSRV, ttl), Priority: 0, Weight: 10, Port: port, Target: target}
}

func hdr(owner string, t uint16, ttl uint32) dns.RR_Header {
	return dns.RR_Header{Name: owner, Rrtype: t, Class: dns.ClassINET, Ttl: ttl}
}

func deref[T any](p *T) T {
	var z T
	if p == nil {
		return z
	}
	return *p
}

// wireKey is the lowercase wire form of a relative name without its
// final root byte: the map key queries are looked up by.
func wireKey(name string) string {
	var buf [256]byte
	off, err := dns.PackDomainName(strings.ToLower(dns.Fqdn(name)), buf[:], 0, nil, false)
	if err != nil {
		return "\x00invalid"
	}
	return string(buf[:off-1])
}
