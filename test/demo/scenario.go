package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	brokerclient "github.com/isthmus-dev/isthmus/mcs/api/broker/generated/clientset/versioned"
	brokerv1 "github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1"
	"github.com/isthmus-dev/isthmus/test/netnstest"
)

// FQDN is the exported service's clusterset name.
const FQDN = Service + "." + Namespace + ".svc.clusterset.local"

// Step is one narrated step's outcome, for the summary table.
type Step struct {
	Name     string
	Took     time.Duration
	Failed   int // failed requests during the step
	Total    int // requests sent during the step
	ServedBy string
	Note     string
	// ServerID and ClientID are an mTLS step's identities: the SPIFFE id
	// the serving pod presented, as the client verified it, and the one
	// the server saw the client present.
	ServerID, ClientID string
}

// Results are what a scenario run measured.
type Results struct {
	Steps []Step
	// ClusterSetIP is the IP c's resolver answered.
	ClusterSetIP netip.Addr
}

// Step returns the named step's outcome.
func (r *Results) Step(name string) (Step, bool) {
	for _, s := range r.Steps {
		if s.Name == name {
			return s, true
		}
	}
	return Step{}, false
}

// Step names, in the order the scenario runs them.
const (
	StepReady        = "ready"
	StepResolve      = "resolve from c"
	StepReach        = "reach from c"
	StepDiagnose     = "diagnose from c"
	StepXDS          = "gRPC xDS from c"
	StepLocalDown    = "a's pods down"
	StepXDSDown      = "a's pods down: gRPC from c"
	StepLocalBack    = "a's pods back"
	StepXDSBack      = "a's pods back: gRPC from c"
	StepClusterCut   = "a cut off"
	StepUnhealthy    = "a unhealthy"
	StepWithdrawn    = "a withdrawn"
	stepTimeoutShort = 30 * time.Second
	stepTimeoutLong  = 60 * time.Second
)

// Run narrates the scenario against a world made by Up, checking every
// step; it stops at the first step that does not hold.
func (w *World) Run(ctx context.Context) (*Results, error) {
	r := &Results{}
	a, c := w.Member("a"), w.Member("c")

	// 0. Wait until the clusterset is up end to end.
	t := time.Now()
	w.say("waiting for the tunnels and for echo to be imported in every member")
	vip, err := w.waitReady(ctx)
	if err != nil {
		return r, err
	}
	r.Steps = append(r.Steps, Step{Name: StepReady, Took: time.Since(t), Note: "tunnels connected, imports in a, b, c"})
	if sum := w.tunnelSummary(ctx); sum != "" {
		w.say("ready after %s; tunnels: %s", time.Since(t).Round(10*time.Millisecond), sum)
	} else {
		w.say("ready after %s: every tunnel connected, echo imported in a, b and c", time.Since(t).Round(10*time.Millisecond))
	}

	if !w.OnNodes() {
		// One process, one observability endpoint for all its roles.
		for _, m := range w.Members {
			if err := m.checkMetrics(ctx); err != nil {
				return r, err
			}
		}
		w.say("each node's `isthmus all` serves /readyz ok and one /metrics with isthmus_agent_*, isthmus_dns_*, isthmus_tunnel_* and isthmus_xds_*")
	}

	// 1. DNS from c.
	t = time.Now()
	answer, how, err := w.resolve(ctx, c)
	if err != nil {
		return r, err
	}
	if answer != vip {
		return r, fmt.Errorf("c's resolver answered %s for %s, want the ClusterSetIP %s", answer, FQDN, vip)
	}
	r.ClusterSetIP = answer
	r.Steps = append(r.Steps, Step{Name: StepResolve, Took: time.Since(t), Note: how + " answered " + answer.String()})
	w.say("from c: %s %s -> %s, the ClusterSetIP c's apiserver gave the derived Service (%s)", how, FQDN, answer, time.Since(t).Round(time.Millisecond))

	// 2. TCP from c's client pod through the ClusterSetIP, over the tunnel.
	t = time.Now()
	target := netip.AddrPortFrom(vip, servicePort)
	before := w.wgTransfer(c)
	served, err := c.Request(target, 2*time.Second)
	if err != nil {
		return r, fmt.Errorf("c's client to %s: %w", target, err)
	}
	if served != "a" {
		return r, fmt.Errorf("c's client was served by %s, want a (same region eu)", served)
	}
	after := w.wgTransfer(c)
	if after <= before {
		return r, fmt.Errorf("c's WireGuard device sent nothing to a (%d -> %d bytes): the request did not cross the tunnel", before, after)
	}
	r.Steps = append(r.Steps, Step{Name: StepReach, Took: time.Since(t), ServedBy: served,
		Note: fmt.Sprintf("kube-proxy -> a's pod over WireGuard (+%d B sent)", after-before)})
	w.say("from c's client pod: TCP to %s answered by cluster %s (same region eu); kube-proxy sent it to a's pod IP over WireGuard (+%d bytes on c's tunnel device) in %s",
		target, served, after-before, time.Since(t).Round(time.Millisecond))

	// isthmusctl diagnose from c walks the service end to end.
	t = time.Now()
	if err := w.diagnose(ctx, c); err != nil {
		return r, err
	}
	r.Steps = append(r.Steps, Step{Name: StepDiagnose, Took: time.Since(t), Note: "every check passes from c"})
	if w.OnNodes() {
		w.say("isthmusctl diagnose %s.%s from c: export records, import, endpoints, DNS (through a port-forward to isthmus-dns), tunnels to a and b all fine (%s)", Service, Namespace, time.Since(t).Round(time.Millisecond))
	} else {
		w.say("isthmusctl diagnose %s.%s from c: export records, import, endpoints, DNS, tunnels to a and b, and what c's xDS server gives a gRPC client all fine (%s)", Service, Namespace, time.Since(t).Round(time.Millisecond))
	}

	// 3. The proxyless gRPC client in c, with mTLS both ways.
	gl, err := w.grpcStep(ctx, r)
	if err != nil {
		return r, err
	}
	defer gl.stop()

	// 4. a's own pods go away: a's clients fail over to b, then back; so
	// does c's gRPC client.
	w.say("a's client sends a request every %s through the ClusterSetIP, c's gRPC client an RPC every %s; now a's echo pods are deleted", loadInterval, loadInterval)
	vipA, err := w.clusterSetIP(ctx, a)
	if err != nil {
		return r, err
	}
	la := a.startLoad(netip.AddrPortFrom(vipA, servicePort))
	defer la.stop()
	sctx, cancel := context.WithTimeout(ctx, stepTimeoutShort)
	defer cancel()
	if _, err := la.waitServedBy(sctx, time.Now(), "a", 5); err != nil {
		return r, fmt.Errorf("before the failover, a's client: %w", err)
	}
	var acted time.Time
	step, err := failover(ctx, la, StepLocalDown, "b", stepTimeoutShort, func() error { acted = time.Now(); return a.ScaleEcho(ctx, 0) })
	if err != nil {
		return r, fmt.Errorf("after a's pods went, a's client: %w", err)
	}
	r.Steps = append(r.Steps, step)
	w.say("a's pods gone: a's client served by b (us) after %s, %d of %d requests failed meanwhile", step.Took.Round(time.Millisecond), step.Failed, step.Total)
	step, err = settle(ctx, gl, StepXDSDown, acted, "b", stepTimeoutShort)
	if err != nil {
		return r, fmt.Errorf("after a's pods went, c's gRPC client: %w", err)
	}
	r.Steps = append(r.Steps, step)
	w.say("a's pods gone: c's gRPC client served by b (us) after %s, %d of %d RPCs failed meanwhile", step.Took.Round(time.Millisecond), step.Failed, step.Total)

	step, err = failover(ctx, la, StepLocalBack, "a", stepTimeoutShort, func() error { acted = time.Now(); return a.ScaleEcho(ctx, echoReplicas) })
	if err != nil {
		return r, fmt.Errorf("after a's pods returned, a's client: %w", err)
	}
	r.Steps = append(r.Steps, step)
	w.say("a's pods back: a's client served locally again after %s, %d of %d requests failed meanwhile", step.Took.Round(time.Millisecond), step.Failed, step.Total)
	step, err = settle(ctx, gl, StepXDSBack, acted, "a", stepTimeoutShort)
	if err != nil {
		return r, fmt.Errorf("after a's pods returned, c's gRPC client: %w", err)
	}
	r.Steps = append(r.Steps, step)
	w.say("a's pods back: c's gRPC client served by a again after %s, %d of %d RPCs failed meanwhile", step.Took.Round(time.Millisecond), step.Failed, step.Total)
	la.stop()
	gl.stop()
	if w.mTLS() {
		if err := checkIdentities(gl.since(time.Time{})); err != nil {
			return r, fmt.Errorf("c's gRPC client: %w", err)
		}
	}

	// 5. Cluster a is cut off: link down and its daemon gone.
	lc := c.startLoad(netip.AddrPortFrom(vip, servicePort))
	defer lc.stop()
	sctx3, cancel3 := context.WithTimeout(ctx, stepTimeoutLong)
	defer cancel3()
	if _, err := lc.waitServedBy(sctx3, time.Now(), "a", 5); err != nil {
		return r, fmt.Errorf("before the cut, c's client: %w", err)
	}
	if w.OnNodes() {
		w.say("c's client pod sends a request every %s; now cluster a is cut off: its node's underlay link goes down (its pods keep running, its agent loses the broker, the tunnels to it go dark)", loadInterval)
	} else {
		w.say("c's client sends a request every %s; now cluster a is cut off: its node's link goes down and its isthmus dies", loadInterval)
	}
	t = time.Now()
	unhealthy := make(chan time.Time, 1)
	step, err = failover(ctx, lc, StepClusterCut, "b", stepTimeoutLong, func() error {
		if err := a.CutOff(); err != nil {
			return err
		}
		a.KillIsthmus()
		go func() {
			at, _ := w.waitHeartbeat(sctx3, "a", brokerv1.ReasonLeaseExpired, brokerv1.ReasonWithdrawn)
			unhealthy <- at
		}()
		return nil
	})
	if err != nil {
		return r, fmt.Errorf("after a was cut off, c's client: %w", err)
	}
	r.Steps = append(r.Steps, step)
	if at := <-unhealthy; at.IsZero() {
		return r, fmt.Errorf("a's Cluster record never showed Heartbeat=False")
	} else {
		r.Steps = append(r.Steps, Step{Name: StepUnhealthy, Took: at.Sub(t), Note: "Heartbeat=False on a's record (lease " + LeaseDuration.String() + ")"})
		w.say("a marked unhealthy (Heartbeat=False) %s after the cut", at.Sub(t).Round(time.Millisecond))
	}
	wd, err := w.waitWithdrawn(sctx3, c, "a")
	if err != nil {
		return r, err
	}
	r.Steps = append(r.Steps, Step{Name: StepWithdrawn, Took: wd.Sub(t), Note: "a gone from c's ServiceImport (withdraw after " + WithdrawAfter.String() + ")"})
	w.say("a withdrawn from c's import %s after the cut; c's client served by b (us) after %s, %d of %d requests failed meanwhile",
		wd.Sub(t).Round(time.Millisecond), step.Took.Round(time.Millisecond), step.Failed, step.Total)
	return r, nil
}

// failover does act, then waits until ten requests of l in a row are
// served by cluster to, and reports how long that took from act and how
// many requests failed meanwhile.
func failover(ctx context.Context, l *load, name, to string, timeout time.Duration, act func() error) (Step, error) {
	t := time.Now()
	if err := act(); err != nil {
		return Step{}, err
	}
	return settle(ctx, l, name, t, to, timeout)
}

// settle waits until ten requests of l in a row from t on are served by
// cluster to, and reports how long that took from t and how many requests
// failed meanwhile.
func settle(ctx context.Context, l *load, name string, t time.Time, to string, timeout time.Duration) (Step, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	first, err := l.waitServedBy(ctx, t, to, 10)
	if err != nil {
		return Step{}, err
	}
	failed, total := failures(l.since(t), t, first)
	step := Step{Name: name, Took: first.Sub(t), Failed: failed, Total: total, ServedBy: to}
	for _, s := range l.since(t) {
		if s.err != nil && s.at.Before(first) {
			step.Note = "first failure: " + shorten(s.err.Error(), 100)
			break
		}
	}
	return step, nil
}

// shorten cuts s to at most n bytes, marking the cut.
func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}

// Summary writes the results as a table.
func (r *Results) Summary(out io.Writer) {
	tw := tabwriter.NewWriter(out, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "STEP\tTOOK\tFAILED/SENT\tSERVED BY\tNOTE")
	for _, s := range r.Steps {
		fs := "-"
		if s.Total > 0 {
			fs = fmt.Sprintf("%d/%d", s.Failed, s.Total)
		}
		by := s.ServedBy
		if by == "" {
			by = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.Name, s.Took.Round(time.Millisecond), fs, by, s.Note)
	}
	tw.Flush()
}

// waitReady waits until every member imports echo with a ClusterSetIP and
// every tunnel is connected, and returns c's ClusterSetIP.
func (w *World) waitReady(ctx context.Context) (netip.Addr, error) {
	timeout := 90 * time.Second
	if w.OnNodes() {
		timeout = 3 * time.Minute // the chart's pods elect, sync and connect the tunnels
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		err := w.readyErr(ctx)
		if err == nil {
			return w.clusterSetIP(ctx, w.Member("c"))
		}
		for _, m := range w.Members {
			m.mu.Lock()
			p := m.daemon
			m.mu.Unlock()
			if p != nil && !p.running() {
				return netip.Addr{}, fmt.Errorf("isthmus in %s exited (log %s)", m.ID, m.IsthmusLog())
			}
		}
		if ctx.Err() == nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return netip.Addr{}, fmt.Errorf("the clusterset did not come up: %v", last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (w *World) readyErr(ctx context.Context) error {
	for _, m := range w.Members {
		if _, err := w.clusterSetIP(ctx, m); err != nil {
			return err
		}
		rec, err := w.record(ctx, m.ID)
		if err != nil {
			return err
		}
		if rec.Status.Tunnel != nil {
			if len(rec.Status.Tunnel.Peers) != len(w.Members)-1 {
				return fmt.Errorf("%s: tunnel status lists %d peers", m.ID, len(rec.Status.Tunnel.Peers))
			}
			for _, p := range rec.Status.Tunnel.Peers {
				if p.State != brokerv1.TunnelPeerConnected {
					return fmt.Errorf("%s: tunnel to %s is %s", m.ID, p.Cluster, p.State)
				}
			}
			continue
		}
		// Before the structured tunnel status: the condition summing it up.
		ok := slices.ContainsFunc(rec.Status.Conditions, func(c metav1.Condition) bool {
			return c.Type == "TunnelPeersConnected" && c.Status == metav1.ConditionTrue
		})
		if !ok {
			return fmt.Errorf("%s: tunnels not all connected yet", m.ID)
		}
		// The condition holds with no peer at all: count them on the device.
		out, err := exec.CommandContext(ctx, "wg", "show", m.WGDevice, "peers").Output()
		if err != nil {
			return fmt.Errorf("%s: wg show %s: %w", m.ID, m.WGDevice, err)
		}
		if n := len(strings.Fields(string(out))); n != len(w.Members)-1 {
			return fmt.Errorf("%s: %d WireGuard peers, want %d", m.ID, n, len(w.Members)-1)
		}
	}
	// kube-proxy has programmed c's ClusterSetIP, the path works, and it
	// leads where the scenario starts from: a, c's own region. Until c's
	// agent has seen a's ready endpoints it imports b's, the nearest it
	// knows (a CI run on a busy machine, 2026-12-07, caught that moment),
	// and kube-proxy follows a second later.
	c := w.Member("c")
	vip, err := w.clusterSetIP(ctx, c)
	if err != nil {
		return err
	}
	served, err := c.Request(netip.AddrPortFrom(vip, servicePort), 500*time.Millisecond)
	if err != nil {
		return fmt.Errorf("c's client through %s: %w", vip, err)
	}
	if served != "a" {
		return fmt.Errorf("c's client through %s is served by %s, not yet by a (same region)", vip, served)
	}
	return nil
}

// clusterSetIP reads the echo ServiceImport's IP in a member.
func (w *World) clusterSetIP(ctx context.Context, m *Member) (netip.Addr, error) {
	mc, err := mcsclient.NewForConfig(m.Cluster.Config)
	if err != nil {
		return netip.Addr{}, err
	}
	si, err := mc.MulticlusterV1beta1().ServiceImports(Namespace).Get(ctx, Service, metav1.GetOptions{})
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%s: %w", m.ID, err)
	}
	if len(si.Spec.IPs) == 0 {
		return netip.Addr{}, fmt.Errorf("%s: %w", m.ID, errNoImport)
	}
	return netip.ParseAddr(si.Spec.IPs[0])
}

func (w *World) record(ctx context.Context, id string) (*brokerv1.Cluster, error) {
	b, err := brokerclient.NewForConfig(w.Clusters.Broker.Config)
	if err != nil {
		return nil, err
	}
	c, err := b.BrokerV1alpha1().Clusters(brokerv1.DefaultBrokerNamespace).Get(ctx, id, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("reading the Cluster record of %s: %w", id, err)
	}
	return c, nil
}

// waitHeartbeat waits until id's record has Heartbeat=False with one of
// reasons, and returns when it was seen.
func (w *World) waitHeartbeat(ctx context.Context, id string, reasons ...string) (time.Time, error) {
	for {
		if rec, err := w.record(ctx, id); err == nil {
			for _, c := range rec.Status.Conditions {
				if c.Type == brokerv1.ClusterConditionHeartbeat && c.Status == metav1.ConditionFalse && slices.Contains(reasons, c.Reason) {
					return time.Now(), nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitWithdrawn waits until m's echo ServiceImport no longer lists id.
func (w *World) waitWithdrawn(ctx context.Context, m *Member, id string) (time.Time, error) {
	mc, err := mcsclient.NewForConfig(m.Cluster.Config)
	if err != nil {
		return time.Time{}, err
	}
	for {
		si, err := mc.MulticlusterV1beta1().ServiceImports(Namespace).Get(ctx, Service, metav1.GetOptions{})
		if err == nil && !slices.ContainsFunc(si.Status.Clusters, func(c mcsv1beta1.ClusterStatus) bool { return c.Cluster == id }) {
			return time.Now(), nil
		}
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("%s still imports echo from %s: %w", m.ID, id, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// wgTransfer is the bytes m's WireGuard device has sent to all peers.
func (w *World) wgTransfer(m *Member) int64 {
	if w.OnNodes() {
		return m.nodeTxBytes(context.Background())
	}
	out, err := exec.Command("wg", "show", m.WGDevice, "transfer").Output()
	if err != nil {
		return 0
	}
	var sum int64
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 {
			var tx int64
			fmt.Sscan(f[2], &tx)
			sum += tx
		}
	}
	return sum
}

// tunnelSummary describes the tunnels as the records report them.
func (w *World) tunnelSummary(ctx context.Context) string {
	var parts []string
	for _, m := range w.Members {
		rec, err := w.record(ctx, m.ID)
		if err != nil || rec.Status.Tunnel == nil {
			continue
		}
		for _, p := range rec.Status.Tunnel.Peers {
			rtt := ""
			if p.RTTMicros > 0 {
				rtt = " " + (time.Duration(p.RTTMicros) * time.Microsecond).String()
			}
			parts = append(parts, fmt.Sprintf("%s->%s %s%s", m.ID, p.Cluster, p.State, rtt))
		}
	}
	return strings.Join(parts, ", ")
}

// diagnose runs `isthmusctl diagnose` as a person would and fails unless
// every check passes: for host processes in m's node namespace, where its
// resolver and xDS server listen; on real nodes from the host with the
// demo's kubeconfig and the hub's, the resolver reached through a
// port-forward to the chart's isthmus-dns (the xDS server serves TLS to
// token holders only, so the xDS check is the gRPC step's).
func (w *World) diagnose(ctx context.Context, m *Member) error {
	want := []string{"export here", "broker records", "import", "endpoints", "dns", "tunnel to a", "tunnel to b"}
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", m.Node, w.ctl, "diagnose", Service+"."+Namespace,
		"--kubeconfig", m.Cluster.Kubeconfig, "--dns-server", fmt.Sprintf("127.0.0.1:%d", DNSPort), "--xds-server", xdsAddr, "--xds-plaintext", "-o", "json")
	if w.OnNodes() {
		// The member's stored broker credential names the hub's address on
		// the underlay, which only the nodes reach: from the host the hub
		// is on loopback.
		cmd = exec.CommandContext(ctx, w.ctl, "diagnose", Service+"."+Namespace,
			"--kubeconfig", w.Clusters.Kubeconfig, "--context", m.Cluster.Name,
			"--broker-kubeconfig", w.Clusters.Broker.Kubeconfig, "-o", "json")
	} else {
		want = append(want, "xds "+FQDN+":80")
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("isthmusctl diagnose in %s: %w\n%s", m.ID, err, out)
	}
	var findings []struct {
		Check, Detail, Advice string
		OK                    bool
	}
	if err := json.Unmarshal(out, &findings); err != nil {
		return fmt.Errorf("isthmusctl diagnose -o json: %w\n%s", err, out)
	}
	checks := map[string]bool{}
	for _, f := range findings {
		checks[f.Check] = true
		if !f.OK {
			return fmt.Errorf("isthmusctl diagnose in %s: %s: %s (%s)", m.ID, f.Check, f.Detail, f.Advice)
		}
	}
	for _, want := range want {
		if !checks[want] {
			return fmt.Errorf("isthmusctl diagnose in %s did not check %q: %s", m.ID, want, out)
		}
	}
	return nil
}

// checkMetrics reads the member's /readyz and /metrics from inside its
// node namespace, where `isthmus all` serves them.
func (m *Member) checkMetrics(ctx context.Context) error {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := netnstest.Run(m.Node, func() (err error) {
				c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		}}}
	get := func(path string) (int, string, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+metricsAddr+path, nil)
		if err != nil {
			return 0, "", err
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, "", fmt.Errorf("%s: GET %s: %w", m.ID, path, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}
	code, body, err := get("/readyz")
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("%s: /readyz %d: %s", m.ID, code, body)
	}
	_, body, err = get("/metrics")
	if err != nil {
		return err
	}
	for _, prefix := range []string{"isthmus_agent_", "isthmus_dns_", "isthmus_tunnel_", "isthmus_xds_"} {
		if !strings.Contains(body, "\n"+prefix) {
			return fmt.Errorf("%s: /metrics of isthmus all has no %s* metric", m.ID, prefix)
		}
	}
	return nil
}

// resolve asks c's resolver for FQDN as a client there would: for host
// processes dig in c's node namespace; on real nodes a lookup in c's
// client pod through the pod's own resolv.conf (c's CoreDNS). It returns
// the answer and what asked.
func (w *World) resolve(ctx context.Context, c *Member) (netip.Addr, string, error) {
	if w.OnNodes() {
		out, err := c.execClient(ctx, "resolve", FQDN)
		if err != nil {
			return netip.Addr{}, "", fmt.Errorf("resolving in c's client pod: %w", err)
		}
		first, _, _ := strings.Cut(strings.TrimSpace(out), "\n")
		a, err := netip.ParseAddr(first)
		if err != nil {
			return netip.Addr{}, "", fmt.Errorf("c's client pod resolved %s to %q", FQDN, out)
		}
		return a, "a lookup in c's client pod (its resolv.conf: c's CoreDNS)", nil
	}
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", c.Node, "dig", "+short", "+time=1", "+tries=3",
		"-p", fmt.Sprint(DNSPort), "@127.0.0.1", FQDN, "A").CombinedOutput()
	if err != nil {
		return netip.Addr{}, "", fmt.Errorf("dig in c: %w: %s", err, out)
	}
	a, err := netip.ParseAddr(strings.TrimSpace(string(out)))
	if err != nil {
		return netip.Addr{}, "", fmt.Errorf("c's resolver answered %q for %s", strings.TrimSpace(string(out)), FQDN)
	}
	return a, "dig", nil
}

// mTLS says whether the gRPC step runs in mTLS with the identities our
// xDS server issues: with host processes, whose `isthmus all` writes the
// workload certificates; not on real nodes, where the chart issues none to
// workloads yet.
func (w *World) mTLS() bool { return !w.OnNodes() }
