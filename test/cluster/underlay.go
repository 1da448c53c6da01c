package cluster

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
)

// startUnderlay builds the images every real node imports and starts the
// underlay: a network namespace of the harness's own holding a bridge that
// each member's node joins with a veth. The bridge is the only link
// between nodes; no node has a route to another member's pod range, so
// pods of different members reach each other only through a tunnel a test
// sets up. It returns the image archives.
func (cs *Clusterset) startUnderlay(ctx context.Context, coreDNS bool) ([]string, error) {
	images, err := buildNodeImages(ctx, filepath.Join(cs.Dir, "images"), coreDNS)
	if err != nil {
		return nil, err
	}
	cs.underlay = &process{
		name:    "underlay",
		bin:     "unshare",
		args:    []string{"--net", "--", "sleep", "infinity"},
		exe:     resolve("sleep"),
		logPath: filepath.Join(cs.Dir, "underlay.log"),
		reg:     cs.reg,
	}
	pid, err := startHolder(ctx, cs.underlay)
	if err != nil {
		return nil, err
	}
	for _, step := range [][]string{
		{"ip", "link", "add", underlayBridge, "type", "bridge"},
		{"ip", "link", "set", underlayBridge, "up"},
	} {
		cmd := exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(pid), "-n", "--"}, step...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("underlay: %s: %w: %s", strings.Join(step, " "), err, out)
		}
	}
	return images, nil
}

// serveBrokerOnUnderlay gives the underlay bridge the gateway address and
// relays the broker's apiserver there, at its own port: real nodes and,
// masqueraded, their pods reach the hub as members of a real clusterset
// reach theirs, over the network between the clusters.
func (cs *Clusterset) serveBrokerOnUnderlay() error {
	pid := cs.underlay.cmd.Process.Pid
	cmd := exec.Command("nsenter", "-t", strconv.Itoa(pid), "-n", "--", "ip", "addr", "add",
		netip.PrefixFrom(underlayGateway, nodePrefixLen).String(), "dev", underlayBridge)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("underlay: addressing the bridge: %w: %s", err, out)
	}
	port := cs.Broker.apiPort()
	stop, err := relayIntoNode(pid, netip.AddrPortFrom(underlayGateway, uint16(port)).String(), "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		return fmt.Errorf("underlay: relaying the broker: %w", err)
	}
	cs.stops = append(cs.stops, stop)
	cs.BrokerServer = "https://" + netip.AddrPortFrom(underlayGateway, uint16(port)).String()
	return nil
}

// buildNodeImages runs test/image's nodeimages command (its own module,
// with go-containerregistry) to write the pause and test server images
// into dir, and with coreDNS CoreDNSImage too. The Go build cache makes it
// a few seconds after the first time (CoreDNS: about a minute the first
// time).
func buildNodeImages(ctx context.Context, dir string, coreDNS bool) ([]string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return nil, errors.New("locating test/image: no caller information")
	}
	module := filepath.Join(filepath.Dir(file), "..", "image")
	args := []string{"run", "./nodeimages", "-out", dir}
	images := []string{filepath.Join(dir, "pause.tar"), filepath.Join(dir, "testserver.tar")}
	if coreDNS {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		bin, err := buildCoreDNS(ctx, dir)
		if err != nil {
			return nil, err
		}
		args = append(args, "-add", CoreDNSImage+"="+bin)
		images = append(images, bin+".tar")
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = module
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("building the node images in %s: %w: %s", module, err, out)
	}
	return images, nil
}
