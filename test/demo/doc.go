// Package demo runs the Isthmus demonstration, which is also its
// end-to-end test: a broker and three member clusters (real
// kube-apiservers from test/cluster), regions eu (a, c) and us (b), each
// member's node in its own network namespace running the real kube-proxy
// (nftables mode) and `isthmus all`, the WireGuard endpoints on a bridge
// between the node namespaces, and echo servers as pods in a and b whose
// IPs are served by a real listener in a pod namespace behind that
// member's node. The scenario then narrates and checks: DNS and routing
// from c over the tunnel; a proxyless gRPC client in c (gRPC-Go's xDS
// client on c's xDS server) served by a in mTLS, with the workload
// certificates each cluster's xDS role writes; failover to b and back
// when a's pods go and return, for a's TCP client and c's gRPC client;
// and a's withdrawal when the whole cluster is cut off.
//
// The echo pods serve the plain echo line and gRPC's interop TestService
// on one port (the service needs a single port for its bare xDS name): a
// connection that starts with a TLS handshake is gRPC. The gRPC client
// runs in c's node namespace as this program started again (ClientMain),
// since gRPC dials from threads of its own.
//
// Every namespace, link and WireGuard socket it makes is named isd…, and
// Down (or the next Up) removes them, so nothing of a run is left behind.
package demo
