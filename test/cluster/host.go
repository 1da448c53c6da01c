package cluster

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// cniDir is where Debian's containernetworking-plugins puts the plugins.
const cniDir = "/usr/lib/cni"

// nodeHostProblems lists what this host lacks to run real nodes, each with
// how to get it; empty means it can. Real nodes need root (namespaces,
// mounts, cgroups), the cgroup v1 hierarchies the kubelet's cgroupfs
// driver manages here, the container runtime's Debian packages and the
// kubelet of the tools build.
func nodeHostProblems(kubelet string) []string {
	var problems []string
	if os.Geteuid() != 0 {
		problems = append(problems, "not root: real nodes make network and mount namespaces, mounts and cgroups (run the tests as root)")
	}
	for _, c := range []string{"cpu", "cpuset", "memory", "pids", "devices", "freezer"} {
		if _, err := os.Stat(filepath.Join(cgroupMount, c, "cgroup.procs")); err != nil {
			problems = append(problems, fmt.Sprintf("no cgroup v1 %s hierarchy at %s/%s: the harness drives the kubelet's cgroupfs driver on cgroup v1 hierarchies (a cgroup v2-only host is not supported yet)", c, cgroupMount, c))
		}
	}
	packages := map[string][]string{
		"containerd":                  {"containerd", "containerd-shim-runc-v2", "ctr"},
		"runc":                        {"runc"},
		"socat":                       {"socat"},
		"util-linux":                  {"unshare", "nsenter", "mount"},
		"iproute2":                    {"ip"},
		"nftables":                    {"nft"},
		"containernetworking-plugins": nil, // checked by path below
	}
	var missing []string
	for pkg, bins := range packages {
		for _, b := range bins {
			if _, err := exec.LookPath(b); err != nil {
				missing = append(missing, fmt.Sprintf("%s (Debian package %s)", b, pkg))
			}
		}
	}
	for _, p := range []string{"bridge", "host-local", "loopback", "portmap"} {
		if _, err := os.Stat(filepath.Join(cniDir, p)); err != nil {
			missing = append(missing, fmt.Sprintf("%s/%s (Debian package containernetworking-plugins)", cniDir, p))
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		problems = append(problems, "missing "+strings.Join(missing, ", ")+
			": run `make deps`, or apt-get install --no-install-recommends containerd runc containernetworking-plugins socat")
	}
	if _, err := os.Stat(kubelet); err != nil {
		problems = append(problems, fmt.Sprintf("no kubelet at %s: run `make tools` (builds just the kubelet into an existing tools cache)", kubelet))
	}
	return problems
}

// checkNodeHost fails with every problem at once, so a person fixes the
// host in one go; in CI this fails the run, never skips it.
func checkNodeHost(kubelet string) error {
	problems := nodeHostProblems(kubelet)
	if len(problems) == 0 {
		return nil
	}
	return fmt.Errorf("this host cannot run real nodes:\n  - %s", strings.Join(problems, "\n  - "))
}

// RealNodeHostProblems lists what this host lacks to run real nodes with
// the tools build in binDir (empty: as New finds it), each with how to get
// it; empty means it can. A program that does slow work before New (the
// demo builds images first) asks it up front.
func RealNodeHostProblems(binDir string) []string {
	bins, err := findBinaries(binDir)
	if err != nil {
		return append(nodeHostProblems(""), err.Error())
	}
	return nodeHostProblems(bins.kubelet)
}
