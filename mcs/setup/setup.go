// Package setup is what `isthmusctl broker install` and `isthmusctl join`
// do: it installs the broker's namespace, CRDs, RBAC, admission policies
// and fairness (FlowSchema) on the hub cluster, and joins a member cluster
// to it with an identity of its own per role, whose tokens the agent
// renews (credential.go); it also checks that the broker's policies are in
// place (policycheck.go). Every step is idempotent: it applies the desired object with
// server-side apply and reports, kubectl-style, whether it was created,
// configured or unchanged.
package setup

import (
	"context"
	"fmt"
	"io"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// FieldManager owns the fields isthmusctl applies.
const FieldManager = "isthmusctl"

// Clients reach one cluster.
type Clients struct {
	Config  *rest.Config
	Kube    kubernetes.Interface
	Dynamic dynamic.Interface
}

// NewClients makes the clients for a cluster from its configuration.
func NewClients(cfg *rest.Config) (*Clients, error) {
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("making Kubernetes client for %s: %w", cfg.Host, err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("making dynamic client for %s: %w", cfg.Host, err)
	}
	return &Clients{Config: cfg, Kube: kube, Dynamic: dyn}, nil
}

// applier applies objects to one cluster and reports what it did.
type applier struct {
	c     *Clients
	out   io.Writer
	where string // suffix for report lines, e.g. " (broker)"
	// manifests, when set, receives each object instead of the cluster:
	// a dry run reads the cluster but writes nothing to it.
	manifests *[]*unstructured.Unstructured
}

// apply server-side-applies obj (a typed object with TypeMeta set) as
// resource gvr and reports "<resource>/<name> created|configured|unchanged".
func (a *applier) apply(ctx context.Context, gvr schema.GroupVersionResource, obj runtime.Object) (*unstructured.Unstructured, error) {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return nil, fmt.Errorf("converting %T: %w", obj, err)
	}
	u := &unstructured.Unstructured{Object: m}
	unstructured.RemoveNestedField(u.Object, "metadata", "creationTimestamp")
	unstructured.RemoveNestedField(u.Object, "status")
	if a.manifests != nil {
		*a.manifests = append(*a.manifests, u)
		a.report(gvr, u.GetName(), "written to the manifests")
		return u, nil
	}
	var ri dynamic.ResourceInterface = a.c.Dynamic.Resource(gvr)
	if ns := u.GetNamespace(); ns != "" {
		ri = a.c.Dynamic.Resource(gvr).Namespace(ns)
	}
	name := u.GetName()
	before, err := ri.Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		before = nil
	case err != nil:
		return nil, fmt.Errorf("reading %s %s: %w", gvr.Resource, name, err)
	}
	after, err := ri.Apply(ctx, name, u, metav1.ApplyOptions{FieldManager: FieldManager, Force: true})
	if err != nil {
		return nil, fmt.Errorf("applying %s %s: %w", gvr.Resource, name, err)
	}
	action := "created"
	if before != nil {
		action = "unchanged"
		if before.GetResourceVersion() != after.GetResourceVersion() {
			action = "configured"
		}
	}
	a.report(gvr, name, action)
	return after, nil
}

func (a *applier) report(gvr schema.GroupVersionResource, name, action string) {
	kind := gvr.Resource
	if gvr.Group != "" {
		kind += "." + gvr.Group
	}
	fmt.Fprintf(a.out, "%s/%s %s%s\n", kind, name, action, a.where)
}

var crdGVR = apiextensionsv1.SchemeGroupVersion.WithResource("customresourcedefinitions")

// applyCRDs applies CRDs and waits until the apiserver serves them.
func (a *applier) applyCRDs(ctx context.Context, crds []*apiextensionsv1.CustomResourceDefinition) error {
	for _, crd := range crds {
		crd.TypeMeta = metav1.TypeMeta{APIVersion: apiextensionsv1.SchemeGroupVersion.String(), Kind: "CustomResourceDefinition"}
		if _, err := a.apply(ctx, crdGVR, crd); err != nil {
			return err
		}
	}
	if a.manifests != nil {
		return nil
	}
	for _, crd := range crds {
		err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			u, err := a.c.Dynamic.Resource(crdGVR).Get(ctx, crd.Name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			var got apiextensionsv1.CustomResourceDefinition
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &got); err != nil {
				return false, err
			}
			for _, c := range got.Status.Conditions {
				if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
					return true, nil
				}
			}
			return false, nil
		})
		if err != nil {
			return fmt.Errorf("waiting for CRD %s to be established: %w", crd.Name, err)
		}
	}
	return nil
}
