// Package tunnel holds the end-to-end tests of `isthmus tunnel`: three
// clusters as network namespaces on a bridge, each running the real
// daemon, peered through cluster records on a real broker apiserver. The
// tests need root and create only namespaces and interfaces named tnl*.
package tunnel
