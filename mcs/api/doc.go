// Package api holds the broker's API: the one contract shared by every
// Isthmus component. The Go types live in v1alpha1; the CRD manifests that
// install them (and the upstream MCS and ClusterProperty CRDs that member
// clusters need) live in crds.
package api
