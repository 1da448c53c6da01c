// Package v1alpha1 is the broker API, group broker.isthmus.dev, version
// v1alpha1: the records a member cluster publishes into the broker
// namespace on the hub cluster.
//
// A member writes only records whose source cluster is itself: one Cluster
// (its identity, locality, tunnel and network facts), one ExportedService per
// Service it exports, the EndpointSlices of those services (ordinary
// discovery.k8s.io/v1 slices carrying the MCS labels), and one
// coordination.k8s.io Lease as its heartbeat. No object on the broker is
// shared between members, so importers merge records instead of racing on a
// read-modify-write of a common object.
//
// +kubebuilder:object:generate=true
// +groupName=broker.isthmus.dev
package v1alpha1
