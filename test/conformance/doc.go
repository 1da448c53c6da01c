// Package conformance is the project's side of mcs-api's conformance
// suite, which is not ours and is never copied here: run.sh (make
// conformance) builds it from the caller's checkout and runs its specs in
// parallel with the Ginkgo CLI of the suite's own Ginkgo version against a
// clusterset (TestConformanceIPv4 and TestConformanceDualStack start one on
// real nodes, IPv4 or dual-stack), and this package's tests check the images the suite's pods
// run (built by `test/image suite-images` from Debian's binaries) behave
// as the suite expects: each tool it calls is run from the unpacked image
// with chroot, in a network namespace of the test's own, against our own
// resolver.
package conformance
