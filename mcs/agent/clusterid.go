package agent

import (
	"context"
	"fmt"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/dynamic"
)

// ClusterIDProperty is the ClusterProperty (KEP-2149) naming a cluster's id.
const ClusterIDProperty = "cluster.clusterset.k8s.io"

var clusterPropertyGVR = schema.GroupVersionResource{Group: "about.k8s.io", Version: "v1alpha1", Resource: "clusterproperties"}

// ClusterID settles this cluster's id from its ClusterProperty and the
// operator's flag: either alone, or both when they agree. Neither, or a
// disagreement, is an error that says what to do.
func ClusterID(ctx context.Context, local dynamic.Interface, flag string) (string, error) {
	var property string
	prop, err := local.Resource(clusterPropertyGVR).Get(ctx, ClusterIDProperty, metav1.GetOptions{})
	switch {
	case err == nil:
		property, _, _ = unstructured.NestedString(prop.Object, "spec", "value")
	case apierrors.IsNotFound(err):
	default:
		return "", fmt.Errorf("reading ClusterProperty %s: %w", ClusterIDProperty, err)
	}
	id := property
	switch {
	case property == "" && flag == "":
		return "", fmt.Errorf("no cluster id: set --cluster-id, or create the ClusterProperty %s (isthmusctl join does)", ClusterIDProperty)
	case property != "" && flag != "" && property != flag:
		return "", fmt.Errorf("--cluster-id=%s disagrees with ClusterProperty %s=%s: a cluster has one id; drop the flag or fix the property", flag, ClusterIDProperty, property)
	case property == "":
		id = flag
	}
	if errs := validation.IsDNS1123Label(id); len(errs) > 0 {
		return "", fmt.Errorf("cluster id %q is not a DNS label: %s", id, strings.Join(errs, "; "))
	}
	return id, nil
}
