// Package isthmus is the CoreDNS plugin form of Isthmus's clusterset.local
// resolver: the same index and handler as `isthmus dns`, fed by the same
// informers, inside an operator's existing CoreDNS. It is its own Go module
// so that the Isthmus daemon never links CoreDNS.
package isthmus

import (
	"context"
	"fmt"
	"strconv"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
	clog "github.com/coredns/coredns/plugin/pkg/log"
	"github.com/miekg/dns"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	isthmusdns "github.com/isthmus-dev/isthmus/dnsserver"
)

// Name is the plugin's name in a Corefile.
const Name = "isthmus"

func init() { plugin.Register(Name, setup) }

// options is one `isthmus` block of a Corefile.
type options struct {
	cfg         isthmusdns.Config
	kubeconfig  string
	kubeContext string
}

// parse reads
//
//	isthmus [ZONE] {
//	    kubeconfig PATH [CONTEXT]
//	    ttl SECONDS
//	    cluster_zone ZONE
//	    max_udp_size BYTES
//	}
//
// ZONE defaults to the server block's first zone.
func parse(c *caddy.Controller) (options, error) {
	var o options
	i := 0
	for c.Next() {
		if i > 0 {
			return o, plugin.ErrOnce
		}
		i++
		args := c.RemainingArgs()
		switch len(args) {
		case 0:
			if keys := c.ServerBlockKeys; len(keys) > 0 {
				o.cfg.Zone = plugin.Host(keys[0]).NormalizeExact()[0]
			}
		case 1:
			o.cfg.Zone = dns.Fqdn(args[0])
		default:
			return o, c.ArgErr()
		}
		for c.NextBlock() {
			switch key := c.Val(); key {
			case "kubeconfig":
				a := c.RemainingArgs()
				if len(a) < 1 || len(a) > 2 {
					return o, c.ArgErr()
				}
				o.kubeconfig = a[0]
				if len(a) == 2 {
					o.kubeContext = a[1]
				}
			case "ttl", "max_udp_size":
				a := c.RemainingArgs()
				if len(a) != 1 {
					return o, c.ArgErr()
				}
				n, err := strconv.ParseUint(a[0], 10, 32)
				if err != nil {
					return o, c.Errf("%s %q: %v", key, a[0], err)
				}
				if key == "ttl" {
					if n == 0 || n > 3600 {
						return o, c.Errf("ttl %d: must be 1-3600", n)
					}
					o.cfg.TTL = uint32(n)
				} else {
					o.cfg.MaxUDPSize = int(n)
				}
			case "cluster_zone":
				a := c.RemainingArgs()
				if len(a) != 1 {
					return o, c.ArgErr()
				}
				o.cfg.ClusterZone = dns.Fqdn(a[0])
			default:
				return o, c.Errf("unknown property %q", key)
			}
		}
	}
	return o, nil
}

func setup(c *caddy.Controller) error {
	o, err := parse(c)
	if err != nil {
		return plugin.Error(Name, err)
	}
	b, err := isthmusdns.NewBuilder(o.cfg, nil)
	if err != nil {
		return plugin.Error(Name, err)
	}
	restCfg, err := restConfig(o.kubeconfig, o.kubeContext)
	if err != nil {
		return plugin.Error(Name, err)
	}
	kc, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return plugin.Error(Name, fmt.Errorf("building Kubernetes client: %w", err))
	}
	mc, err := mcsclient.NewForConfig(restCfg)
	if err != nil {
		return plugin.Error(Name, fmt.Errorf("building MCS client: %w", err))
	}
	h, err := isthmusdns.NewHandler(b.Config(), nil)
	if err != nil {
		return plugin.Error(Name, err)
	}
	src, err := isthmusdns.NewSource(isthmusdns.SourceConfig{Kube: kc, MCS: mc, Builder: b, Handler: h, Log: slogToCoreDNS()})
	if err != nil {
		return plugin.Error(Name, err)
	}
	p := &Plugin{handler: h, source: src}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	c.OnStartup(func() error {
		go func() {
			defer close(done)
			if err := src.Run(ctx); err != nil && ctx.Err() == nil {
				clog.Errorf("isthmus: %v", err)
			}
		}()
		return nil
	})
	c.OnShutdown(func() error {
		cancel()
		<-done
		return nil
	})
	dnsserver.GetConfig(c).AddPlugin(func(next plugin.Handler) plugin.Handler {
		p.Next = next
		return p
	})
	return nil
}

func restConfig(kubeconfig, context string) (*rest.Config, error) {
	if kubeconfig == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no kubeconfig given and not in a cluster: %w", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
		&clientcmd.ClientConfigLoadingRules{ExplicitPath: kubeconfig},
		&clientcmd.ConfigOverrides{CurrentContext: context}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("loading kubeconfig %s: %w", kubeconfig, err)
	}
	return cfg, nil
}
