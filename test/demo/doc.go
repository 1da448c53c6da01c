// Package demo runs the Isthmus demonstration, which is also its
// end-to-end test: a broker and three member clusters, regions eu (a, c)
// and us (b), echo in a and b exported from both, and a scenario that
// narrates and checks: DNS and routing from c over the tunnel; a
// proxyless gRPC client in c (gRPC-Go's xDS client on c's xDS server)
// served by a; failover to b and back when a's pods go and return, for
// a's TCP client and c's gRPC client; and a's withdrawal when the whole
// cluster is cut off.
//
// It runs in two worlds. UpOnNodes (`make demo`, TestDemo) installs
// Isthmus as a user does, with test/install: real kubelets, containerd
// and kube-proxy on nodes joined by an underlay, the image and charts
// from the tree, CoreDNS as each member's cluster DNS; echo, the TCP
// clients and the gRPC client are pods of an image built from the tree
// (cmd/isthmus-demo-pod, package pod), and their requests go pod →
// kube-proxy → WireGuard → pod. Up (TestHostProcesses) runs `isthmus all`
// as a host process per member, the other supported way to run it: each
// node a network namespace with the real kube-proxy, KWOK as the kubelet,
// the echo pods' IPs served by a listener in a pod namespace behind the
// node; there the gRPC client speaks mTLS with the workload certificates
// `isthmus all` writes, and runs in c's node namespace as this program
// started again (ClientMain), since gRPC dials from threads of its own.
//
// The echo servers answer the plain echo line and gRPC's interop
// TestService on one port (the service needs a single port for its bare
// xDS name): the first byte a client sends picks the protocol.
//
// In the host-process world every namespace, link and WireGuard socket is
// named isd…, and Down (or the next Up) removes them; on real nodes Down
// stops the harness, which removes its nodes, and World.Leftovers checks
// that nothing stays.
package demo
