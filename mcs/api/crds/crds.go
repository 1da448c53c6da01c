// Package crds embeds the CustomResourceDefinitions Isthmus installs: the
// broker's own (generated from mcs/api/broker/v1alpha1 by controller-gen), the
// upstream MCS ServiceExport and ServiceImport, and ClusterProperty.
package crds

import (
	"embed"
	"fmt"
	"io/fs"
	"sort"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/mcs-api/config/crd"
	"sigs.k8s.io/yaml"
)

//go:embed broker.isthmus.dev_*.yaml
var brokerFS embed.FS

//go:embed about.k8s.io_clusterproperties.yaml
var clusterPropertyYAML []byte

// Broker returns the CRDs the broker cluster needs.
func Broker() ([]*apiextensionsv1.CustomResourceDefinition, error) {
	names, err := fs.Glob(brokerFS, "*.yaml")
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	var out []*apiextensionsv1.CustomResourceDefinition
	for _, name := range names {
		data, err := brokerFS.ReadFile(name)
		if err != nil {
			return nil, err
		}
		c, err := decode(name, data)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// Member returns the CRDs every member cluster needs: the MCS API's
// ServiceExport and ServiceImport from sigs.k8s.io/mcs-api, and
// ClusterProperty.
func Member() ([]*apiextensionsv1.CustomResourceDefinition, error) {
	var out []*apiextensionsv1.CustomResourceDefinition
	for _, f := range []struct {
		name string
		data []byte
	}{
		{"mcs-api serviceexports", crd.ServiceExportCRD},
		{"mcs-api serviceimports", crd.ServiceImportCRD},
		{"clusterproperties", clusterPropertyYAML},
	} {
		c, err := decode(f.name, f.data)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

func decode(name string, data []byte) (*apiextensionsv1.CustomResourceDefinition, error) {
	var c apiextensionsv1.CustomResourceDefinition
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		return nil, fmt.Errorf("decoding CRD %s: %w", name, err)
	}
	if c.Kind != "CustomResourceDefinition" || c.Name == "" {
		return nil, fmt.Errorf("decoding CRD %s: not a named CustomResourceDefinition", name)
	}
	return &c, nil
}
