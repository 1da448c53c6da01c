package source

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubeinformers "k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// GatewayPods knows the addresses of the east-west gateway Service's pods,
// ready or not (a gateway is not ready before it has its configuration),
// so the xDS server gives the gateway view, which carries the gateway's
// private key over SDS, to them and to no other client.
type GatewayPods struct {
	slices cache.SharedIndexInformer
	synced atomic.Bool
	name   string
}

// NewGatewayPods watches the EndpointSlices of Service namespace/name.
func NewGatewayPods(kube kubernetes.Interface, namespace, name string) *GatewayPods {
	f := kubeinformers.NewSharedInformerFactoryWithOptions(kube, 0, kubeinformers.WithNamespace(namespace),
		kubeinformers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = discoveryv1.LabelServiceName + "=" + name }))
	return &GatewayPods{slices: f.Discovery().V1().EndpointSlices().Informer(), name: namespace + "/" + name}
}

// Run watches until ctx ends.
func (g *GatewayPods) Run(ctx context.Context) error {
	go g.slices.Run(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), g.slices.HasSynced) {
		return fmt.Errorf("listing the EndpointSlices of the gateway Service %s: %w", g.name, ctx.Err())
	}
	g.synced.Store(true)
	<-ctx.Done()
	return nil
}

// Ready reports nil once the gateway Service's slices were listed.
func (g *GatewayPods) Ready() error {
	if !g.synced.Load() {
		return errors.New("the gateway Service's EndpointSlices are not listed yet")
	}
	return nil
}

// Has reports whether a is the address of one of the gateway's pods.
// Before the first list it knows none.
func (g *GatewayPods) Has(a netip.Addr) bool {
	a = a.Unmap()
	for _, o := range g.slices.GetStore().List() {
		for _, e := range o.(*discoveryv1.EndpointSlice).Endpoints {
			for _, s := range e.Addresses {
				if p, err := netip.ParseAddr(s); err == nil && p == a {
					return true
				}
			}
		}
	}
	return false
}
