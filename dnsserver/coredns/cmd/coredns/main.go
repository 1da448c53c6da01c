// Command coredns is CoreDNS with the plugins a cluster's DNS server runs
// (the Corefile kubeadm installs: errors, health, ready, kubernetes,
// prometheus, forward, cache, loop, reload, loadbalance, log) and the
// isthmus plugin, ordered just before kubernetes as plugin.cfg would put
// it. It is the CoreDNS of the plugin install mode, for an operator who
// builds their cluster's CoreDNS with Isthmus inside; without an isthmus
// block in its Corefile it is a stock CoreDNS, which is how the tests run
// the other mode (stock CoreDNS forwarding clusterset.local to `isthmus
// dns`).
//
//	CGO_ENABLED=0 go build ./cmd/coredns && ./coredns -conf Corefile
package main

import (
	"slices"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"

	isthmus "github.com/isthmus-dev/isthmus/dnsserver/coredns"
)

func init() {
	// A plugin runs where its name stands in this list, whatever the
	// Corefile's order: isthmus answers its zone before kubernetes, whose
	// fallthrough would otherwise see clusterset.local names first.
	at := slices.Index(dnsserver.Directives, "kubernetes")
	dnsserver.Directives = slices.Insert(dnsserver.Directives, at, isthmus.Name)
}

func main() { coremain.Run() }
