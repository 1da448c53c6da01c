package dnsserver

import (
	"github.com/miekg/dns"
)

// query is what the answer path needs from a request, parsed without
// allocating. The same struct is filled from raw packets (the daemon's
// UDP path) and from a *dns.Msg (miekg's server, CoreDNS).
type query struct {
	id    uint16
	flags uint16 // the request's header flags: opcode, RD, CD
	// question is the request's question section as sent (name in the
	// client's case, type, class), echoed verbatim.
	question    []byte
	hasQuestion bool
	// lower is the name in lowercase wire form; offs the start of every
	// label in it, the root label last.
	lower   [255]byte
	nameLen int
	offs    [128]uint8
	nlabels int // len(offs) used, root included
	qtype   uint16
	qclass  uint16
	edns    bool
	udpSize uint16
	do      bool
	version uint8
	// scratch holds the question when it is built from a *dns.Msg.
	scratch [259]byte
}

// status is what parsing decided.
type status uint8

const (
	stOK      status = iota
	stDrop           // not answerable: too short, or itself a response
	stFormErr        // malformed: FORMERR
	stNotImp         // an opcode we do not serve: NOTIMP
	stBadVers        // EDNS version above 0: BADVERS
)

// parseName reads an uncompressed name at b[off:] into q (a query's
// question never needs compression), returning the offset after it.
func (q *query) parseName(b []byte, off int) (int, bool) {
	n, nl := 0, 0
	for {
		if off >= len(b) || nl >= len(q.offs) {
			return 0, false
		}
		l := int(b[off])
		if l&0xC0 != 0 {
			return 0, false // compression pointer or extended label type
		}
		if n+l+1 > len(q.lower) || off+1+l > len(b) {
			return 0, false
		}
		q.offs[nl] = uint8(n)
		nl++
		q.lower[n] = byte(l)
		for i := 1; i <= l; i++ {
			c := b[off+i]
			if c >= 'A' && c <= 'Z' {
				c += 'a' - 'A'
			}
			q.lower[n+i] = c
		}
		n += l + 1
		off += l + 1
		if l == 0 {
			q.nameLen, q.nlabels = n, nl
			return off, true
		}
	}
}

// parse fills q from a raw request.
func (q *query) parse(b []byte) status {
	q.hasQuestion, q.edns = false, false
	if len(b) < 12 {
		return stDrop
	}
	q.id = be.Uint16(b)
	q.flags = be.Uint16(b[2:])
	if q.flags&0x8000 != 0 {
		return stDrop // a response: never answer one (no loops)
	}
	qd, an, ns, ar := be.Uint16(b[4:]), be.Uint16(b[6:]), be.Uint16(b[8:]), be.Uint16(b[10:])
	off := 12
	if qd >= 1 {
		end, ok := q.parseName(b, off)
		if ok && end+4 <= len(b) {
			q.qtype, q.qclass = be.Uint16(b[end:]), be.Uint16(b[end+2:])
			q.question = b[off : end+4]
			q.hasQuestion = qd == 1
			off = end + 4
		} else if qd == 1 {
			return stFormErr
		}
	}
	if opcode := (q.flags >> 11) & 0xF; opcode != dns.OpcodeQuery {
		return stNotImp
	}
	if qd != 1 || an != 0 || ns != 0 || ar > 1 {
		return stFormErr
	}
	if ar == 1 {
		return q.parseOPT(b, off)
	}
	return stOK
}

// parseOPT reads the one additional record a query may carry: OPT.
func (q *query) parseOPT(b []byte, off int) status {
	// Owner must be the root; then type, class (UDP size), TTL (extended
	// rcode, version, flags), rdlength.
	if off+11 > len(b) || b[off] != 0 || be.Uint16(b[off+1:]) != dns.TypeOPT {
		return stFormErr
	}
	q.edns = true
	q.udpSize = be.Uint16(b[off+3:])
	q.version = b[off+6]
	q.do = b[off+7]&0x80 != 0
	rdlen := int(be.Uint16(b[off+9:]))
	rd := b[off+11:]
	if rdlen > len(rd) {
		return stFormErr
	}
	for rd = rd[:rdlen]; len(rd) > 0; {
		if len(rd) < 4 || int(be.Uint16(rd[2:]))+4 > len(rd) {
			return stFormErr
		}
		rd = rd[4+int(be.Uint16(rd[2:])):]
	}
	if q.version > 0 {
		return stBadVers
	}
	return stOK
}

// fromMsg fills q from a request miekg/dns has already parsed.
func (q *query) fromMsg(r *dns.Msg) status {
	q.hasQuestion, q.edns = false, false
	q.id = r.Id
	q.flags = uint16(r.Opcode&0xF) << 11
	if r.RecursionDesired {
		q.flags |= 0x0100
	}
	if r.CheckingDisabled {
		q.flags |= 0x0010
	}
	if r.Response {
		return stDrop
	}
	if len(r.Question) >= 1 {
		n, err := dns.PackDomainName(r.Question[0].Name, q.scratch[:], 0, nil, false)
		if err == nil && n+4 <= len(q.scratch) {
			be.PutUint16(q.scratch[n:], r.Question[0].Qtype)
			be.PutUint16(q.scratch[n+2:], r.Question[0].Qclass)
			if _, ok := q.parseName(q.scratch[:n], 0); ok {
				q.qtype, q.qclass = r.Question[0].Qtype, r.Question[0].Qclass
				q.question = q.scratch[:n+4]
				q.hasQuestion = len(r.Question) == 1
			}
		}
	}
	if r.Opcode != dns.OpcodeQuery {
		return stNotImp
	}
	if len(r.Question) != 1 || !q.hasQuestion || len(r.Answer) != 0 || len(r.Ns) != 0 {
		return stFormErr
	}
	extra := len(r.Extra)
	if opt := r.IsEdns0(); opt != nil {
		q.edns = true
		q.udpSize = opt.UDPSize()
		q.version = opt.Version()
		q.do = opt.Do()
		extra--
	}
	if extra != 0 {
		return stFormErr
	}
	if q.edns && q.version > 0 {
		return stBadVers
	}
	return stOK
}
