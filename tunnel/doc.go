// Package tunnel runs WireGuard on a cluster's gateway node: it keeps the
// cluster's private key in a Secret, brings up a WireGuard device (the
// kernel's where present, wireguard-go embedded in this process
// otherwise, both driven through wgctrl), peers it with every other
// cluster named in the broker's cluster records, routes their pod and
// service CIDRs through it, checks each tunnel end to end, and publishes
// its own key, endpoint and health on its cluster's record.
//
// Peers and routes are reconciled by difference, one peer at a time,
// because replacing all of a live device's peers drops every session.
// The routes live in a table of their own, consulted by a rule (rule.go),
// so a route someone else made is never replaced.
package tunnel
