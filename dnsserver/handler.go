package dnsserver

import (
	"hash/maphash"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// Observer sees every answered query: its type, rcode (extended rcodes
// such as BADVERS included) and how long answering took.
type Observer interface {
	Observe(qtype uint16, rcode int, took time.Duration)
}

// Handler answers queries from the current Index. Until the first Index
// is stored it answers SERVFAIL for names in its zones: NXDOMAIN would be
// a cached lie (the intermittent NXDOMAIN of coredns#7350) and SERVFAIL
// sends resolvers to retry; readiness keeps a Service from routing to an
// unsynced server anyway.
type Handler struct {
	cfg   Config
	zones [][]byte // wire forms, for REFUSED before the first index
	ix    atomic.Pointer[Index]
	obs   Observer
	seed  maphash.Seed
	bufs  sync.Pool
}

// NewHandler returns a Handler for cfg (the Builder's Config). obs may be
// nil.
func NewHandler(cfg Config, obs Observer) (*Handler, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	h := &Handler{cfg: c, obs: obs, seed: maphash.MakeSeed()}
	h.zones = append(h.zones, []byte(wireKey(c.Zone)+"\x00"))
	if c.ClusterZone != "" {
		h.zones = append(h.zones, []byte(wireKey(c.ClusterZone)+"\x00"))
	}
	h.bufs.New = func() any { b := make([]byte, 0, 65535); return &b }
	return h, nil
}

// Store makes ix the index every later query reads.
func (h *Handler) Store(ix *Index) { h.ix.Store(ix) }

// Index returns the current index, nil before the first Store.
func (h *Handler) Index() *Index { return h.ix.Load() }

// Respond answers the raw request req from client from, appending the
// response to dst[:0]; nil means send nothing. It allocates nothing.
func (h *Handler) Respond(dst, req []byte, from netip.Addr, tcp bool) []byte {
	start := time.Now()
	var q query
	st := q.parse(req)
	out := h.respond(dst[:0], &q, st, from, tcp, start)
	if out != nil && h.obs != nil {
		h.obs.Observe(q.qtype, rcodeOf(out), time.Since(start))
	}
	return out
}

// ServeDNS answers a request miekg/dns has parsed (the daemon's TCP path).
func (h *Handler) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	bp := h.bufs.Get().(*[]byte)
	defer h.bufs.Put(bp)
	if out := h.AppendAnswer((*bp)[:0], r, w.RemoteAddr()); out != nil {
		_, _ = w.Write(out)
	}
}

// AppendAnswer appends the response to a parsed request from remote (a
// *net.UDPAddr or *net.TCPAddr, which sets the transport) to dst; nil
// means send nothing. CoreDNS's plugin form answers through it.
func (h *Handler) AppendAnswer(dst []byte, r *dns.Msg, remote net.Addr) []byte {
	start := time.Now()
	q := new(query)
	st := q.fromMsg(r)
	var from netip.Addr
	tcp := false
	switch a := remote.(type) {
	case *net.UDPAddr:
		from, _ = netip.AddrFromSlice(a.IP)
	case *net.TCPAddr:
		from, _ = netip.AddrFromSlice(a.IP)
		tcp = true
	}
	out := h.respond(dst, q, st, from.Unmap(), tcp, start)
	if out != nil && h.obs != nil {
		h.obs.Observe(q.qtype, rcodeOf(out), time.Since(start))
	}
	return out
}

// InZones reports whether name (presentation form) is in one of the
// handler's zones: the plugin form passes other names on.
func (h *Handler) InZones(name string) bool {
	var q query
	var buf [256]byte
	n, err := dns.PackDomainName(name, buf[:], 0, nil, false)
	if err != nil {
		return false
	}
	if _, ok := q.parseName(buf[:n], 0); !ok {
		return false
	}
	for _, z := range h.zones {
		if inZone(q.lower[:q.nameLen], q.offs[:q.nlabels], &zone{wire: z}) >= 0 {
			return true
		}
	}
	return false
}

func (h *Handler) respond(b []byte, q *query, st status, from netip.Addr, tcp bool, now time.Time) []byte {
	switch st {
	case stDrop:
		return nil
	case stFormErr:
		return h.errorReply(b, q, dns.RcodeFormatError)
	case stNotImp:
		return h.errorReply(b, q, dns.RcodeNotImplemented)
	case stBadVers:
		return h.errorReply(b, q, dns.RcodeBadVers)
	}
	lw, offs := q.lower[:q.nameLen], q.offs[:q.nlabels]
	if q.qclass != dns.ClassINET {
		return h.errorReply(b, q, dns.RcodeRefused)
	}
	ix := h.ix.Load()
	if ix == nil {
		for _, z := range h.zones {
			if inZone(lw, offs, &zone{wire: z}) >= 0 {
				return h.errorReply(b, q, dns.RcodeServerFailure)
			}
		}
		return h.errorReply(b, q, dns.RcodeRefused)
	}
	res, z, n := ix.lookup(lw, offs)
	if res == resRefused || q.qtype == dns.TypeAXFR || q.qtype == dns.TypeIXFR {
		return h.errorReply(b, q, dns.RcodeRefused)
	}
	if res == resNXDomain {
		return h.negative(b, q, z, dns.RcodeNameError)
	}
	a := n.pick(q.qtype)
	if a == nil {
		return h.negative(b, q, z, dns.RcodeSuccess)
	}
	large := q.edns && int(q.udpSize) >= h.cfg.MaxUDPSize
	var seed uint32
	if !tcp && a.rotates() {
		seed = h.rotation(from, now)
	}
	packed := a.variant(tcp, large, seed)
	b = append(b, packed...)
	be.PutUint16(b, q.id)
	b[2] = 0x84 | packed[2]&0x02 | byte(q.flags>>8)&0x01 // QR, AA, TC as packed, RD
	b[3] = byte(q.flags)&0x10 | packed[3]&0x0F           // CD echoed, rcode
	copy(b[12:], q.question)                             // the client's case and type
	return h.appendOPT(b, q, 0)
}

// rotation chooses which subset of a large answer a client gets: stable
// for one client within a TTL (so its A and AAAA queries name the same
// endpoints), different between clients and over time.
func (h *Handler) rotation(from netip.Addr, now time.Time) uint32 {
	a := from.As16()
	return uint32(maphash.Bytes(h.seed, a[:])) + uint32(now.Unix()/int64(max(h.cfg.TTL, 1)))
}

// header writes a 12-byte header with the given counts.
func header(b []byte, q *query, flags uint16, rcode int, qd, an, ns, ar uint16) []byte {
	b = be.AppendUint16(b, q.id)
	b = be.AppendUint16(b, flags|q.flags&0x7900|uint16(rcode&0xF)) // opcode, RD echoed
	b = be.AppendUint16(b, qd)
	b = be.AppendUint16(b, an)
	b = be.AppendUint16(b, ns)
	return be.AppendUint16(b, ar)
}

// negative is NXDOMAIN or NODATA: the question and the zone's SOA in
// authority, its owner a pointer to the zone's labels in the question.
func (h *Handler) negative(b []byte, q *query, z *zone, rcode int) []byte {
	b = header(b, q, 0x8400|q.flags&0x0010, rcode, 1, 0, 1, 0)
	b = append(b, q.question...)
	ptr := 12 + q.nameLen - len(z.wire)
	b = be.AppendUint16(b, 0xC000|uint16(ptr))
	b = append(b, z.soaTail...)
	return h.appendOPT(b, q, rcode)
}

// errorReply answers with rcode, echoing the question when there was
// exactly one readable question.
func (h *Handler) errorReply(b []byte, q *query, rcode int) []byte {
	var qd uint16
	if q.hasQuestion {
		qd = 1
	}
	b = header(b, q, 0x8000, rcode, qd, 0, 0, 0)
	if q.hasQuestion {
		b = append(b, q.question...)
	}
	return h.appendOPT(b, q, rcode)
}

// appendOPT adds our OPT record when the query had one (RFC 6891): our
// maximum UDP size, the extended rcode bits, version 0, DO echoed.
func (h *Handler) appendOPT(b []byte, q *query, rcode int) []byte {
	if !q.edns {
		return b
	}
	b = append(b, 0)
	b = be.AppendUint16(b, dns.TypeOPT)
	b = be.AppendUint16(b, uint16(h.cfg.MaxUDPSize))
	b = append(b, byte(rcode>>4), 0)
	var fl uint16
	if q.do {
		fl = 0x8000
	}
	b = be.AppendUint16(b, fl)
	b = be.AppendUint16(b, 0)
	be.PutUint16(b[10:], be.Uint16(b[10:])+1)
	return b
}

// rcodeOf reads the rcode of a response, the OPT's extended bits included.
func rcodeOf(b []byte) int {
	rc := int(b[3] & 0x0F)
	if len(b) >= 23 && be.Uint16(b[10:]) > 0 && b[len(b)-11] == 0 && be.Uint16(b[len(b)-10:]) == dns.TypeOPT {
		rc |= int(b[len(b)-6]) << 4
	}
	return rc
}
