package main

import (
	"os/exec"
	"strings"

	"github.com/isthmus-dev/isthmus/test/netnstest"
)

func must(args ...string) {
	if _, err := netnstest.Sh(args...); err != nil {
		panic(err)
	}
}

// removeNamespaces deletes every namespace of this benchmark.
func removeNamespaces() {
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		if strings.HasPrefix(name, "tnlb") {
			_ = exec.Command("ip", "netns", "del", name).Run()
		}
	}
}
