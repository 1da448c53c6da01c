// Package demo runs the Isthmus demonstration, which is also its
// end-to-end test: a broker and three member clusters (real
// kube-apiservers from test/cluster), regions eu (a, c) and us (b), each
// member's node in its own network namespace running the real kube-proxy
// (nftables mode) and `isthmus all`, the WireGuard endpoints on a bridge
// between the node namespaces, and echo servers as pods in a and b whose
// IPs are served by a real listener in a pod namespace behind that
// member's node. The scenario then narrates and checks: DNS and routing
// from c over the tunnel, local failover when a's pods go, and a's
// withdrawal when the whole cluster is cut off.
//
// Every namespace, link and WireGuard socket it makes is named isd…, and
// Down (or the next Up) removes them, so nothing of a run is left behind.
package demo
