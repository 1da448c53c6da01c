// Package cluster starts a clusterset of real Kubernetes control planes on
// loopback for tests, benchmarks and the demo: a broker hub (kube-apiserver
// on its own etcd) and member clusters (kube-apiserver, kube-controller-
// manager, kube-scheduler and KWOK playing the kubelet, over a shared etcd),
// each with its own CA, serving certificate, service-account keys, RBAC and
// admin kubeconfig, and distinct pod and service CIDRs. A Deployment and a
// Service in a member give Running pods with IPs from that member's pod CIDR
// and EndpointSlices from the real EndpointSlice controller. A dual-stack
// member (Options.DualStack) has IPv4 and IPv6 ranges: its node a pod CIDR
// of each family, its pods an address of each, its PreferDualStack
// Services a ClusterIP of each; on a real node, also an IPv6 node address
// on the underlay (ULA), the CNI bridge handing out both families and
// kube-proxy programming both (nftables tables ip and ip6).
//
// KWOK's pods are cheap and run nothing. With Options.RealNodes each member
// gets a real node instead: the kubelet, containerd with runc and the CNI
// bridge, and kube-proxy (nftables), in a network and mount namespace of
// its own, under a cgroup of its own, with its configuration and state in
// the harness's directory. Its pods run images imported with ctr at start
// (a locally built pause, TestServerImage, Options.Images); nothing is
// pulled. The control plane stays on loopback: a relay in the node's
// namespace is the kubernetes Service's endpoint, and the apiserver reaches
// kubelets and pods through an HTTP CONNECT proxy it is configured with as
// its egress. The members' nodes share an underlay bridge in a namespace
// of the harness's and route no pod range to each other. Real nodes need
// root, cgroup v1 and Debian's containerd, runc and CNI plugins (`make
// deps`); New names whatever is missing. A real node costs about 210 MiB
// (containerd, kubelet, kube-proxy) and 13 MiB per pod's shim.
//
// The binaries come from test/tools (`make tools`). Everything the harness
// starts runs as a child process that dies with the test binary; Stop ends
// each by its PID and removes the harness's files, and kills what a real
// node's containerd left in the node's cgroups (shims, containers) before
// removing them; the namespaces and their mounts and interfaces end with
// their last process. The empty mount points a real node covers with tmpfs
// (/run/containerd, /run/netns, /var/lib/cni, /var/log/containers,
// /var/log/pods) are made on the host when missing and left there:
// removing one would unmount it in every other node too. A harness left behind by a killed test is swept by
// the next one to start.
package cluster
