// Package dnsserver is the authoritative clusterset.local resolver: it
// answers the MCS DNS specification v1.0.0 from a member cluster's
// ServiceImports and MCS EndpointSlices.
//
// Objects go into a Builder; each Build makes an immutable Index in which
// every (name, type) answer is already a packed response. A Handler holds
// the current Index behind an atomic pointer: a query parses the request
// without allocating, finds the name with map lookups keyed by the wire
// form of its labels, copies the packed response and patches the ID, the
// flags, the question (so the client's case is echoed) and an OPT record.
// Only services whose objects changed are repacked per Build, and the
// new Index copies only the shards of the service map it changes
// (shards.go). A service's packed responses share one byte slab
// (identical variants stored once, slab.go). Objects are not kept: the
// Source's reflectors hand them to the Builder, which keeps a compact
// input per object (inputs.go), so memory grows with the bytes answered
// rather than with the objects or with allocations per name.
//
// Decisions the specification leaves open, and why:
//
//   - <clusterid>.<svc>.<ns>.svc.<zone> is reserved by the spec and never
//     carries a record. It answers NODATA, not NXDOMAIN, because it is the
//     empty non-terminal above the per-host names; NXDOMAIN would tell
//     resolvers that follow RFC 8020 that those names do not exist either.
//   - Per-cluster targeting is the opt-in Config.ClusterZone form
//     <svc>.<ns>.svc.<clusterid>.<cluster zone>, in a separate zone, so the
//     clusterset zone stays exactly the spec's.
//   - Headless answers too large for the client's UDP size are whole-RR
//     subsets with TC set, rotating per client and per TTL window so that
//     every endpoint is served and one client's A and AAAA answers name the
//     same endpoints; TCP gets the whole set.
//   - Before the first full sync the Handler answers SERVFAIL in its zones
//     (as CoreDNS does): NXDOMAIN would be cached as a lie. After it, the
//     last index keeps answering whatever happens to the apiserver.
//   - The SOA serial follows the clock and grows with every change; its
//     minimum (the negative-caching TTL) is the answer TTL, 5 s by default.
//   - SRV records use priority 0 and equal weights; the bare service name
//     answers SRV too (the mcs-api conformance suite asks it), one record
//     per distinct port and target.
//   - NOTIFY, UPDATE and every opcode but QUERY get NOTIMP; zone transfers
//     and classes other than IN get REFUSED; EDNS versions above 0 get
//     BADVERS; queries that are not exactly one question with at most an
//     OPT record get FORMERR; packets that are responses or shorter than a
//     header are dropped.
package dnsserver
