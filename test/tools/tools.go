//go:build tools

// Package tools pins the real Kubernetes parts that the test harness runs:
// kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, the
// kubelet (for real nodes), etcd and KWOK. It is a separate module so that the product's go.mod never sees
// k8s.io/kubernetes; `make tools` builds the binaries from here.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
