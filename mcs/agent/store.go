package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/cache"

	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
)

// The helpers export and import share: the write that is skipped when the
// target already holds exactly the object, the write counter, and the
// readers of the informers' caches.

// applySlice writes an EndpointSlice whole (put) unless the target
// already holds exactly it (the hash annotation says so).
func (a *Agent) applySlice(ctx context.Context, target string, api objectAPI[*discoveryv1.EndpointSlice], s *discoveryv1.EndpointSlice) error {
	hash := contentHash([]any{s.Labels, s.OwnerReferences, s.AddressType, s.Endpoints, s.Ports})
	cur := a.cachedSlice(a.ownSlices, s.Namespace, s.Name)
	// Every agent imports from the broker's slices, this one's own import
	// included: their events queue as anyone's, so they are not noted.
	ownKey := sliceWriteKey(s.Namespace, s.Name)
	if target == "broker" {
		cur, ownKey = a.cachedSlice(a.brokerSlices, s.Namespace, s.Name), ""
	}
	_, err := writeWhole(ctx, a, api, s, cur, cur != nil, hash, target, ownKey)
	return err
}

func (a *Agent) countWrite(target, verb string, err error) {
	if err == nil {
		a.metrics.brokerWrites.WithLabelValues(target, verb).Inc()
	}
}

var (
	everything   = labels.Everything()
	force        = true
	patchOptions = metav1.PatchOptions{FieldManager: fieldManager, Force: &force}
)

// applyJSON encodes a typed object, TypeMeta set, for a server-side apply
// patch. It goes through the unstructured form to drop the fields the
// server owns (creationTimestamp, status), which a typed object always
// carries and an apply must not claim.
func applyJSON(obj runtime.Object) ([]byte, error) {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return nil, fmt.Errorf("converting %T: %w", obj, err)
	}
	unstructured.RemoveNestedField(m, "metadata", "creationTimestamp")
	unstructured.RemoveNestedField(m, "status")
	return json.Marshal(m)
}

// Cache readers, each returning what the informers hold now.

func (a *Agent) exportsOf(ns, name string) []*brokerv1.ExportedService {
	objs, _ := a.brokerExports.ByIndex(byService, ns+"/"+name)
	out := make([]*brokerv1.ExportedService, 0, len(objs))
	for _, o := range objs {
		out = append(out, o.(*brokerv1.ExportedService))
	}
	slices.SortFunc(out, func(x, y *brokerv1.ExportedService) int { return strings.Compare(x.Name, y.Name) })
	return out
}

func (a *Agent) brokerExport(name string) (*brokerv1.ExportedService, bool) {
	o, ok, _ := a.brokerExports.GetByKey(a.cfg.BrokerNamespace + "/" + name)
	if !ok {
		return nil, false
	}
	return o.(*brokerv1.ExportedService), true
}

func slicesIn(idx cache.Indexer, key string) []*discoveryv1.EndpointSlice {
	objs, _ := idx.ByIndex(byService, key)
	out := make([]*discoveryv1.EndpointSlice, 0, len(objs))
	for _, o := range objs {
		out = append(out, o.(*discoveryv1.EndpointSlice))
	}
	slices.SortFunc(out, func(x, y *discoveryv1.EndpointSlice) int { return strings.Compare(x.Name, y.Name) })
	return out
}

func (a *Agent) localSlicesOf(ns, name string) []*discoveryv1.EndpointSlice {
	return slicesIn(a.localSlices, ns+"/"+name)
}

func (a *Agent) brokerSlicesOf(ns, name string) []*discoveryv1.EndpointSlice {
	return slicesIn(a.brokerSlices, ns+"/"+name)
}

func (a *Agent) cachedSlice(idx cache.Indexer, ns, name string) *discoveryv1.EndpointSlice {
	o, ok, _ := idx.GetByKey(ns + "/" + name)
	if !ok {
		return nil
	}
	return o.(*discoveryv1.EndpointSlice)
}

func cutKey(key string) (ns, name string, err error) {
	ns, name, ok := strings.Cut(key, "/")
	if !ok || ns == "" || name == "" {
		return "", "", fmt.Errorf("malformed key %q", key)
	}
	return ns, name, nil
}

func withLabel(m map[string]string, k, v string) map[string]string {
	out := clone(m)
	out[k] = v
	return out
}

func clone(m map[string]string) map[string]string {
	out := make(map[string]string, len(m)+1)
	for k, v := range m {
		out[k] = v
	}
	return out
}
