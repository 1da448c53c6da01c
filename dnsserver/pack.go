package dnsserver

import (
	"github.com/miekg/dns"
)

// optLen is the size of the OPT record appended to answers of EDNS
// queries (root owner, no options); every pre-packed variant leaves room
// for it.
const optLen = 11

// answer is one (name, type) RRset packed into complete responses (ID 0,
// the question in lowercase), once per index change. A query copies one,
// then patches the ID, flags, the question's case and EDNS.
type answer struct {
	// tcp is the whole answer, bounded only by the 64 KiB TCP message.
	tcp []byte
	// sized holds the UDP variants; nil when every transport and size
	// gets tcp, as most answers do (they fit 512 bytes whole), which
	// saves two slice headers and an allocation per answer.
	sized *variants
}

// variants are an answer's UDP responses: small fits 512 bytes (clients
// without EDNS or with small buffers); large fits the configured maximum
// UDP size. Each is either the whole answer alone, or rotating subsets
// with TC set.
type variants struct {
	small, large [][]byte
}

// variant returns the packed response for a transport and buffer size;
// seed chooses among rotating subsets.
func (a *answer) variant(tcp, large bool, seed uint32) []byte {
	if tcp || a.sized == nil {
		return a.tcp
	}
	v := a.sized.small
	if large {
		v = a.sized.large
	}
	return v[seed%uint32(len(v))]
}

// rotates reports whether a UDP client gets one of several subsets.
func (a *answer) rotates() bool {
	return a.sized != nil && (len(a.sized.small) > 1 || len(a.sized.large) > 1)
}

// genFunc returns the answer and additional RRs for the units sel selects
// (indexes into the units of one name); extra says whether additional
// records are wanted.
type genFunc func(sel []int, withExtra bool) (ans, extra []dns.RR)

type packer struct {
	cfg *Config
}

func (p *packer) budgets() (small, large, tcp int) {
	return 512 - optLen, p.cfg.MaxUDPSize - optLen, 65535 - optLen
}

func (p *packer) pack(qname string, qtype uint16, ans, extra []dns.RR, tc bool) []byte {
	m := &dns.Msg{MsgHdr: dns.MsgHdr{Response: true, Authoritative: true, Truncated: tc}, Compress: true}
	m.Question = []dns.Question{{Name: qname, Qtype: qtype, Qclass: dns.ClassINET}}
	m.Answer, m.Extra = ans, extra
	b, err := m.Pack()
	if err != nil {
		// Names are validated before they get here; a failure is a bug,
		// and the name answers NODATA rather than take the server down.
		return nil
	}
	return b
}

func seq(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}

// whole packs every unit, with additional records if they fit budget,
// and reports whether the answer fits at all.
func (p *packer) whole(qname string, qtype uint16, n int, gen genFunc, budget int) ([]byte, bool) {
	all := seq(n)
	ans, extra := gen(all, true)
	if b := p.pack(qname, qtype, ans, extra, false); b != nil && len(b) <= budget {
		return b, true
	}
	if len(extra) > 0 {
		// Dropping additional records needs no TC (RFC 2181 §9).
		if b := p.pack(qname, qtype, ans, nil, false); b != nil && len(b) <= budget {
			return b, true
		}
	}
	return nil, false
}

// fitK is the largest number of consecutive units whose answer fits.
func (p *packer) fitK(qname string, qtype uint16, n int, gen genFunc, budget int) int {
	lo, hi := 0, n
	for lo < hi {
		mid := (lo + hi + 1) / 2
		ans, _ := gen(seq(mid), false)
		if b := p.pack(qname, qtype, ans, nil, true); b != nil && len(b) <= budget {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo
}

// rotations packs windows of k units spread over all n, so that
// successive windows (chosen per client and time) cover every unit.
func (p *packer) rotations(qname string, qtype uint16, n int, gen genFunc, k, budget int, tc bool) [][]byte {
	if k <= 0 {
		return [][]byte{p.pack(qname, qtype, nil, nil, tc)}
	}
	r := min((n+k-1)/k, maxRotations)
	out := make([][]byte, 0, r)
	for i := range r {
		off := i * n / r
		sel := make([]int, k)
		for j := range sel {
			sel[j] = (off + j) % n
		}
		for {
			ans, _ := gen(sel, false)
			b := p.pack(qname, qtype, ans, nil, tc)
			if b != nil && len(b) <= budget || len(sel) == 0 {
				out = append(out, b)
				break
			}
			sel = sel[:len(sel)-1]
		}
	}
	return out
}

// answer packs one name's RRset over n units; nil when it has no RR
// (NODATA).
func (p *packer) answer(qname string, qtype uint16, n int, gen genFunc) *answer {
	if ans, _ := gen(seq(n), false); len(ans) == 0 {
		return nil
	}
	small, large, tcp := p.budgets()
	a := &answer{sized: &variants{}}
	if b, ok := p.whole(qname, qtype, n, gen, tcp); ok {
		a.tcp = b
	} else {
		a.tcp = p.rotations(qname, qtype, n, gen, p.fitK(qname, qtype, n, gen, tcp), tcp, false)[0]
	}
	a.sized.small = p.sized(qname, qtype, n, gen, small, -1)
	a.sized.large = p.sized(qname, qtype, n, gen, large, -1)
	return a
}

func (p *packer) sized(qname string, qtype uint16, n int, gen genFunc, budget, k int) [][]byte {
	if b, ok := p.whole(qname, qtype, n, gen, budget); ok && k < 0 {
		return [][]byte{b}
	}
	if k < 0 {
		k = p.fitK(qname, qtype, n, gen, budget)
	}
	return p.rotations(qname, qtype, n, gen, k, budget, true)
}

// answerPair packs the A and AAAA answers of one name so that, when
// either must be cut to fit, both are cut to the same windows of units:
// the spec asks that A and AAAA name the same subset of endpoints.
func (p *packer) answerPair(qname string, n int, genA, genAAAA genFunc) (a, aaaa *answer) {
	a = p.answer(qname, dns.TypeA, n, genA)
	aaaa = p.answer(qname, dns.TypeAAAA, n, genAAAA)
	if a == nil || aaaa == nil {
		return a, aaaa
	}
	small, large, _ := p.budgets()
	for _, sz := range []struct {
		budget int
		fa, fb *[][]byte
	}{{small, &a.sized.small, &aaaa.sized.small}, {large, &a.sized.large, &aaaa.sized.large}} {
		if len(*sz.fa) == 1 && len(*sz.fb) == 1 && !truncated((*sz.fa)[0]) && !truncated((*sz.fb)[0]) {
			continue
		}
		k := min(p.fitK(qname, dns.TypeA, n, genA, sz.budget), p.fitK(qname, dns.TypeAAAA, n, genAAAA, sz.budget))
		*sz.fa = p.rotations(qname, dns.TypeA, n, genA, k, sz.budget, true)
		*sz.fb = p.rotations(qname, dns.TypeAAAA, n, genAAAA, k, sz.budget, true)
	}
	return a, aaaa
}

func truncated(b []byte) bool { return len(b) > 2 && b[2]&0x02 != 0 }
