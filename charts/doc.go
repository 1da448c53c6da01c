// Package charts holds the Helm charts: isthmus for each member cluster and
// isthmus-broker for the hub. It has no code of its own; its tests render
// the charts with the real helm, keep their golden files and generated
// templates current, and apply what they render to real kube-apiservers.
package charts
