package charts_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"sigs.k8s.io/mcs-api/config/crd"
)

// TestMemberChartCRDs: the member chart's crds/ are the CRDs `isthmusctl
// join` applies (mcs/api/crds.Member): mcs-api's ServiceExport and
// ServiceImport at the version go.mod pins, and our ClusterProperty.
func TestMemberChartCRDs(t *testing.T) {
	cp, err := os.ReadFile("../mcs/api/crds/about.k8s.io_clusterproperties.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]byte{
		"multicluster.x-k8s.io_serviceexports.yaml": crd.ServiceExportCRD,
		"multicluster.x-k8s.io_serviceimports.yaml": crd.ServiceImportCRD,
		"about.k8s.io_clusterproperties.yaml":       cp,
	}
	files, err := filepath.Glob(filepath.Join(memberChart, "crds", "*"))
	if err != nil || len(files) != len(want) {
		t.Errorf("the member chart's crds/ holds %v (%v), want %d files", files, err, len(want))
	}
	for name, data := range want {
		path := filepath.Join(memberChart, "crds", name)
		if *update {
			if err := os.WriteFile(path, data, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s differs from the CRD join applies (%v): run go test ./charts -run TestMemberChartCRDs -update", path, err)
		}
	}
}
