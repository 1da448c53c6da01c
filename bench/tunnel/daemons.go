package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/isthmus-dev/isthmus/bench/internal/procstat"
	brokerclient "github.com/isthmus-dev/isthmus/mcs/api/broker/generated/clientset/versioned"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/mcs/api/crds"
	"github.com/isthmus-dev/isthmus/test/cluster"
	"github.com/isthmus-dev/isthmus/test/netnstest"
)

const brokerNS = brokerv1.DefaultBrokerNamespace

type daemons struct {
	broker brokerclient.Interface
	cmds   []*exec.Cmd
	stops  []func()
}

func (d *daemons) stop() {
	for _, c := range d.cmds {
		_ = c.Process.Signal(syscall.SIGTERM)
		_ = c.Wait()
	}
	for _, s := range d.stops {
		s()
	}
}

// startDaemons publishes the two clusters' CIDRs on a real broker and runs
// `isthmus tunnel` in each namespace, with a full pass every resync.
func startDaemons(ctx context.Context, cs *cluster.Clusterset, bin string, resync time.Duration) (*daemons, error) {
	d := &daemons{}
	var err error
	if d.broker, err = brokerclient.NewForConfig(cs.Broker.Config); err != nil {
		return nil, err
	}
	if err := installCRDs(ctx, cs.Broker); err != nil {
		return nil, err
	}
	for _, ns := range []string{brokerNS, "tnlb-a-system", "tnlb-b-system"} {
		if _, err := cs.Broker.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return nil, err
		}
	}
	u, err := url.Parse(cs.Broker.Config.Host)
	if err != nil {
		return nil, err
	}
	for _, s := range []struct{ id, ns, dev, under, pod, svc string }{
		{"tnlb-a", nsA, "tnlbwA", underA, "10.201.0.0/16", "10.211.0.0/16"},
		{"tnlb-b", nsB, "tnlbwB", underB, "10.202.0.0/16", "10.212.0.0/16"},
	} {
		if err := d.applyRecord(ctx, s.id, nil, s.pod, s.svc); err != nil {
			return nil, err
		}
		stop, err := netnstest.Forward(s.ns, u.Host)
		if err != nil {
			return nil, err
		}
		d.stops = append(d.stops, stop)
		c := exec.Command("ip", "netns", "exec", s.ns, bin, "tunnel", "--kubeconfig", cs.Broker.Kubeconfig, "--broker-kubeconfig", cs.Broker.Kubeconfig,
			"--broker-namespace", brokerNS, "--cluster-id", s.id, "--device", s.dev, "--endpoint", s.under+":51820",
			"--key-namespace", s.id+"-system", "--metrics-addr", "127.0.0.1:9093", "--resync", resync.String())
		c.Env = append(os.Environ(), "ISTHMUS_LOG_LEVEL=error")
		c.Stderr = os.Stderr
		if err := c.Start(); err != nil {
			d.stop()
			return nil, err
		}
		d.cmds = append(d.cmds, c)
	}
	if err := waitReach(podA, podB, 30*time.Second); err != nil {
		d.stop()
		return nil, err
	}
	return d, nil
}

// applyRecord writes a record's agent fields, and for the fake peers of
// the reconcile benchmark also a key and endpoint, by server-side apply
// as the agent's field manager.
func (d *daemons) applyRecord(ctx context.Context, id string, wg *brokerv1.WireGuardPeer, cidrs ...string) error {
	rec := &brokerv1.Cluster{
		TypeMeta:   metav1.TypeMeta{APIVersion: brokerv1.SchemeGroupVersion.String(), Kind: "Cluster"},
		ObjectMeta: metav1.ObjectMeta{Name: id, Namespace: brokerNS, Labels: map[string]string{brokerv1.LabelSourceCluster: id}},
		Spec:       brokerv1.ClusterSpec{ClusterID: id, PodCIDRs: cidrs[:1], ServiceCIDRs: cidrs[1:], WireGuard: wg},
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	force := true
	_, err = d.broker.BrokerV1alpha1().Clusters(brokerNS).Patch(ctx, id, types.ApplyPatchType, data, metav1.PatchOptions{FieldManager: "tnlb-agent", Force: &force})
	return err
}

// cost is what one peer change cost at some peer count.
type cost struct {
	// pass is the mean change pass the record change caused; full is the
	// mean full pass (start, resync) while the n peers were on the device,
	// zero when none ran.
	pass, full time.Duration
	// e2e is from the record write to the device showing it.
	e2e time.Duration
	// idle is the daemon's CPU time per second with n peers and no change.
	idle time.Duration
	// ops are the device and routing-table operations the change caused.
	ops map[string]float64
}

// reconcileCost adds n fake peers, changes one, and reports the mean
// change pass during the change, its device operations and the time from
// the record write to the device showing it.
func (d *daemons) reconcileCost(ctx context.Context, n int) (cost, error) {
	var c cost
	wc, err := wgctrl.New()
	if err != nil {
		return c, err
	}
	defer wc.Close()
	peers := func() (map[wgtypes.Key]wgtypes.Peer, error) {
		dev, err := wc.Device("tnlbwA")
		if err != nil {
			return nil, err
		}
		m := map[wgtypes.Key]wgtypes.Peer{}
		for _, p := range dev.Peers {
			m[p.PublicKey] = p
		}
		return m, nil
	}
	mStart, err := scrapeA()
	if err != nil {
		return c, err
	}
	var keys []wgtypes.Key
	for i := range n {
		k, _ := wgtypes.GeneratePrivateKey()
		keys = append(keys, k.PublicKey())
		wg := &brokerv1.WireGuardPeer{PublicKey: k.PublicKey().String(), Endpoint: fmt.Sprintf("192.0.2.%d:51820", 100+i%100)}
		if err := d.applyRecord(ctx, fmt.Sprintf("fake-%d", i), wg, fmt.Sprintf("10.%d.%d.0/24", 64+i/256, i%256)); err != nil {
			return c, err
		}
	}
	defer func() {
		for i := range n {
			_ = d.broker.BrokerV1alpha1().Clusters(brokerNS).Delete(ctx, fmt.Sprintf("fake-%d", i), metav1.DeleteOptions{})
		}
		_ = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(context.Context) (bool, error) {
			p, err := peers()
			return err == nil && len(p) == 1, nil
		})
	}()
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 3*time.Minute, true, func(context.Context) (bool, error) {
		p, err := peers()
		return err == nil && len(p) == n+1, nil
	}); err != nil {
		return c, fmt.Errorf("waiting for %d peers: %w", n+1, err)
	}
	time.Sleep(3 * time.Second) // let the passes the additions caused settle
	// The daemon's CPU while nothing changes: probes, status checks, the
	// device's own handshake retries to the unreachable fake peers, and
	// any resync falling into the window.
	_, cpu0, err := procstat.Process(d.cmds[0].Process.Pid)
	if err != nil {
		return c, err
	}
	time.Sleep(idleWindow)
	_, cpu1, err := procstat.Process(d.cmds[0].Process.Pid)
	if err != nil {
		return c, err
	}
	c.idle = (cpu1 - cpu0) * time.Second / idleWindow
	m0, err := scrapeA()
	if err != nil {
		return c, err
	}
	wg := &brokerv1.WireGuardPeer{PublicKey: keys[0].String(), Endpoint: "192.0.2.100:51820"}
	written := time.Now()
	if err := d.applyRecord(ctx, "fake-0", wg, "10.64.0.0/24", "10.127.0.0/24"); err != nil {
		return c, err
	}
	var seen time.Duration
	if err := wait.PollUntilContextTimeout(ctx, time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		p, err := peers()
		if err != nil || len(p[keys[0]].AllowedIPs) != 2 {
			return false, nil
		}
		seen = time.Since(written)
		return true, nil
	}); err != nil {
		return c, err
	}
	time.Sleep(500 * time.Millisecond)
	m1, err := scrapeA()
	if err != nil {
		return c, err
	}
	const h = "isthmus_tunnel_reconcile_duration_seconds"
	passes := m1[h+`_count{kind="change"}`] - m0[h+`_count{kind="change"}`]
	if passes == 0 {
		return c, fmt.Errorf("no change pass was counted")
	}
	c.pass = time.Duration((m1[h+`_sum{kind="change"}`] - m0[h+`_sum{kind="change"}`]) / passes * 1e9)
	c.e2e = seen
	c.ops = map[string]float64{}
	for series, v := range m1 {
		if op, ok := strings.CutPrefix(series, "isthmus_tunnel_reconcile_operations_total{op="); ok {
			if dv := v - m0[series]; dv != 0 {
				c.ops[strings.Trim(op, `"}`)] = dv
			}
		}
	}
	if fulls := m1[h+`_count{kind="full"}`] - mStart[h+`_count{kind="full"}`]; fulls > 0 {
		c.full = time.Duration((m1[h+`_sum{kind="full"}`] - mStart[h+`_sum{kind="full"}`]) / fulls * 1e9)
	}
	return c, nil
}

// scrapeA reads the metrics of the daemon in A as series -> value.
func scrapeA() (map[string]float64, error) {
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			var c net.Conn
			err := netnstest.Run(nsA, func() (err error) { c, err = (&net.Dialer{}).DialContext(ctx, "tcp", addr); return err })
			return c, err
		},
	}}
	resp, err := client.Get("http://127.0.0.1:9093/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "#") {
			continue
		}
		name, v, ok := strings.Cut(l, " ")
		if !ok {
			continue
		}
		if f, err := strconv.ParseFloat(v, 64); err == nil {
			out[name] = f
		}
	}
	return out, sc.Err()
}

func installCRDs(ctx context.Context, c *cluster.Cluster) error {
	list, err := crds.Broker()
	if err != nil {
		return err
	}
	return c.InstallCRDs(ctx, list)
}

// idleWindow is how long the daemon's idle CPU is measured.
const idleWindow = 10 * time.Second
