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
// Services a ClusterIP of each.
//
// The binaries come from test/tools (`make tools`). Everything the harness
// starts runs as a child process that dies with the test binary; Stop ends
// each by its PID and removes the harness's files. A harness left behind by
// a killed test is swept by the next one to start.
package cluster
