package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/isthmus-dev/isthmus/cmd/internal/kube"
	"github.com/isthmus-dev/isthmus/cmd/internal/probe"
	"github.com/isthmus-dev/isthmus/mcs/agent"
)

// verifyCommand is `isthmusctl verify`: a live check of the clusterset
// with short-lived pods, as subctl verify and cilium connectivity test
// do it.
func verifyCommand(k *kubeFlags) *cobra.Command {
	var servers, client, image string
	var failover bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "verify --servers CONTEXT[,CONTEXT] [--client CONTEXT]",
		Short: "check the clusterset live with short-lived pods: export, resolve, connect, fail over; exits 1 when a step fails",
		Long: `verify runs short-lived pods from the isthmus image: in each --servers context
a server pod, a Service and a ServiceExport; in the --client context (the
current one by default) a client pod that resolves
verify.<namespace>.svc.clusterset.local with its own resolver and connects
to it through the ClusterSetIP every 200 ms. It reports each step with
how long it took: created, server Ready, imported into the client with a
ClusterSetIP and a ready endpoint of every server, resolved in the pod to
that ClusterSetIP, answered by a server (the answer names the server's
cluster).

With --failover and two --servers, it then deletes the server pod of the
cluster that answered and reports how long until the other answers. A
--servers cluster may be the client's own: the connection step then waits
for its answer (local traffic stays local; answers from the other cluster
while kube-proxy catches up are counted), and --failover shows the other
cluster take over through the tunnel.

Everything is made in one namespace (-n, default isthmus-verify) of each
cluster and deleted at the end, also on Ctrl-C. The pods run the isthmus
image of this client's version (--image), with the hidden subcommand
isthmus probe; nodes that reach no registry need it imported.`,
		Example: `  isthmusctl verify --servers east --client west
  isthmusctl verify --servers east,south --client west --failover`,
		Args: cobra.NoArgs,
	}
	output := outputFlag(cmd)
	f := cmd.Flags()
	f.StringVar(&servers, "servers", "", "contexts of the clusters that export the test service, comma-separated (one, or two for --failover)")
	f.StringVar(&client, "client", "", "context of the cluster the client pod runs in (default: the current context)")
	f.StringVar(&image, "image", defaultImage(), "the isthmus image the pods run")
	f.BoolVar(&failover, "failover", false, "delete the server pod of the cluster that answered and show the other --servers cluster take over")
	f.DurationVar(&timeout, "timeout", 3*time.Minute, "bound of each step")
	_ = cmd.RegisterFlagCompletionFunc("servers", k.completeContextList)
	_ = cmd.RegisterFlagCompletionFunc("client", k.completeContexts)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := checkOutput(*output); err != nil {
			return err
		}
		ns, err := k.namespace("isthmus-verify")
		if err != nil {
			return err
		}
		v := &verification{objs: verifyObjects{namespace: ns, image: image}, timeout: timeout, log: k.log}
		serverContexts := splitList(servers)
		switch {
		case len(serverContexts) == 0:
			return errors.New("verify: --servers is required: the context(s) of the exporting cluster(s)")
		case failover && len(serverContexts) != 2:
			return errors.New("verify: --failover needs two --servers: one to drain, one to take over")
		case len(serverContexts) > 2:
			return errors.New("verify: at most two --servers")
		}
		ctx := cmd.Context()
		if v.client, err = v.member(ctx, k, client); err != nil {
			return err
		}
		for _, c := range serverContexts {
			m, err := v.member(ctx, k, c)
			if err != nil {
				return err
			}
			if m.id == v.client.id {
				m = v.client // one namespace, made once
			}
			v.servers = append(v.servers, m)
		}
		v.run(ctx, failover)
		if err := render(cmd.OutOrStdout(), *output, v.steps, v.table); err != nil {
			return err
		}
		var failed []string
		for _, s := range v.steps {
			if !s.OK {
				failed = append(failed, s.Step)
			}
		}
		if len(failed) > 0 {
			return &checksFailed{fmt.Sprintf("verify: %d step(s) failed: %s", len(failed), strings.Join(failed, ", "))}
		}
		return nil
	}
	return cmd
}

// verifyStep is one reported step.
type verifyStep struct {
	Step   string        `json:"step"`
	OK     bool          `json:"ok"`
	Took   time.Duration `json:"tookNanoseconds"`
	Detail string        `json:"detail"`
}

// verifyMember is a cluster taking part, by context.
type verifyMember struct {
	context, id string
	c           *kube.Clients
	made        bool // verify created its namespace there
}

type verification struct {
	objs         verifyObjects
	timeout      time.Duration
	log          interface{ Debug(string, ...any) }
	client       *verifyMember
	servers      []*verifyMember
	steps        []verifyStep
	clusterSetIP string
	events       <-chan received
	lastEventErr string
	// Connection attempts that failed, and answers from a cluster the
	// step did not wait for, since the step began.
	failedConnected, otherAnswers int
}

// received is a client event and when verify read it.
type received struct {
	probe.Event
	at time.Time
}

func (v *verification) member(ctx context.Context, k *kubeFlags, context string) (*verifyMember, error) {
	c, err := k.clients(context)
	if err != nil {
		return nil, err
	}
	id, err := agent.ClusterID(ctx, c.Dynamic, "")
	if err != nil {
		return nil, fmt.Errorf("context %q: no cluster id (is it a joined member?): %w", context, err)
	}
	return &verifyMember{context: context, id: id, c: c}, nil
}

// step runs fn as a reported step, bounded by --timeout; it returns
// whether the step passed.
func (v *verification) step(ctx context.Context, name string, fn func(ctx context.Context) (string, error)) bool {
	ctx, cancel := context.WithTimeout(ctx, v.timeout)
	defer cancel()
	began := time.Now()
	detail, err := fn(ctx)
	s := verifyStep{Step: name, OK: err == nil, Took: time.Since(began), Detail: detail}
	if err != nil {
		s.Detail = err.Error()
		if errors.Is(err, context.DeadlineExceeded) && detail != "" {
			s.Detail = fmt.Sprintf("not within %s: %s", v.timeout, detail)
		}
	}
	v.log.Debug("verify step", "step", s.Step, "ok", s.OK, "took", s.Took, "detail", s.Detail)
	v.steps = append(v.steps, s)
	return s.OK
}

// run runs every step in order, stopping at the first that fails, and
// cleans up whatever happens, also once ctx is cancelled (Ctrl-C).
func (v *verification) run(ctx context.Context, failover bool) {
	defer v.cleanup(context.WithoutCancel(ctx))
	// The import is made in the namespace of the same name, which must
	// exist in the client's cluster first.
	if !v.step(ctx, "create in "+v.client.id, func(ctx context.Context) (string, error) {
		return "namespace " + v.objs.namespace, v.createNamespace(ctx, v.client)
	}) {
		return
	}
	for _, m := range v.servers {
		if !v.step(ctx, "create in "+m.id, func(ctx context.Context) (string, error) { return v.createServer(ctx, m) }) {
			return
		}
	}
	for _, m := range v.servers {
		if !v.step(ctx, "server ready in "+m.id, func(ctx context.Context) (string, error) { return v.podReady(ctx, m, verifyServerPod) }) {
			return
		}
	}
	if !v.step(ctx, "imported in "+v.client.id, v.imported) ||
		!v.step(ctx, "client started in "+v.client.id, v.startClient) ||
		!v.step(ctx, "resolve in pod", v.resolve) {
		return
	}
	var answered string
	if !v.step(ctx, "connect through the ClusterSetIP", func(ctx context.Context) (string, error) {
		var err error
		answered, err = v.connect(ctx)
		return "answered by " + answered + v.failedSoFar(), err
	}) || !failover {
		return
	}
	var drained, other *verifyMember
	for _, m := range v.servers {
		if m.id == answered {
			drained = m
		} else {
			other = m
		}
	}
	if drained == nil {
		v.steps = append(v.steps, verifyStep{Step: "drain", Detail: fmt.Sprintf("the answer came from %q, none of --servers", answered)})
		return
	}
	began := time.Now()
	if !v.step(ctx, "drain "+drained.id, func(ctx context.Context) (string, error) {
		err := drained.c.Kube.CoreV1().Pods(v.objs.namespace).Delete(ctx, verifyServerPod, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
		return "deleted its server pod", err
	}) {
		return
	}
	v.failedConnected, v.otherAnswers = 0, 0
	v.step(ctx, "failover to "+other.id, func(ctx context.Context) (string, error) {
		_, err := v.awaitReply(ctx, func(reply string) bool { return reply == other.id })
		return fmt.Sprintf("answered by %s %s after the drain began%s", other.id, time.Since(began).Round(time.Millisecond), v.failedSoFar()), err
	})
}

// connect waits for the answer that shows traffic reaching a server
// through the ClusterSetIP. With the client's own cluster among the
// servers, locality keeps its traffic there: only its answer passes.
// Another cluster's may come first while kube-proxy (which batches its
// rule updates, by default a second apart) catches up with the import's
// endpoints; those are counted in the step's detail, not hidden.
func (v *verification) connect(ctx context.Context) (string, error) {
	want := func(string) bool { return true }
	if slices.ContainsFunc(v.servers, func(m *verifyMember) bool { return m.id == v.client.id }) {
		want = func(reply string) bool { return reply == v.client.id }
	}
	answered, err := v.awaitReply(ctx, want)
	if err != nil && v.otherAnswers > 0 {
		err = fmt.Errorf("%w: only other clusters answered (%d times), never %s, the client's own", err, v.otherAnswers, v.client.id)
	}
	return answered, err
}

func (v *verification) createServer(ctx context.Context, m *verifyMember) (string, error) {
	if err := v.createNamespace(ctx, m); err != nil {
		return "", err
	}
	ns := v.objs.namespace
	if _, err := m.c.Kube.CoreV1().Pods(ns).Create(ctx, v.objs.serverPod(m.id), metav1.CreateOptions{}); err != nil {
		return "", fmt.Errorf("creating pod %s/%s: %w", ns, verifyServerPod, err)
	}
	if _, err := m.c.Kube.CoreV1().Services(ns).Create(ctx, v.objs.service(), metav1.CreateOptions{}); err != nil {
		return "", fmt.Errorf("creating Service %s/%s: %w", ns, verifyService, err)
	}
	if _, err := m.c.MCS.MulticlusterV1beta1().ServiceExports(ns).Create(ctx, v.objs.export(), metav1.CreateOptions{}); err != nil {
		return "", fmt.Errorf("creating ServiceExport %s/%s: %w", ns, verifyService, err)
	}
	return fmt.Sprintf("pod %s (%s), Service and ServiceExport %s in %s", verifyServerPod, v.objs.image, verifyService, ns), nil
}

// createNamespace makes the namespace, waiting out one an earlier run is
// still deleting; one that exists otherwise is not ours to use.
func (v *verification) createNamespace(ctx context.Context, m *verifyMember) error {
	if m.made {
		return nil
	}
	nss := m.c.Kube.CoreV1().Namespaces()
	for {
		_, err := nss.Create(ctx, v.objs.ns(), metav1.CreateOptions{})
		if err == nil {
			m.made = true
			return nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating namespace %s in %s: %w", v.objs.namespace, m.id, err)
		}
		old, err := nss.Get(ctx, v.objs.namespace, metav1.GetOptions{})
		if err == nil && old.DeletionTimestamp == nil {
			return fmt.Errorf("namespace %s exists in %s: delete it (an earlier verify's?) or pass another -n", v.objs.namespace, m.id)
		}
		if err := sleepCtx(ctx, time.Second); err != nil {
			return fmt.Errorf("namespace %s in %s is still being deleted: %w", v.objs.namespace, m.id, err)
		}
	}
}

// podReady waits for a pod to be Ready (the server) or running or done
// (the client), and says what holds it up when it is not.
func (v *verification) podReady(ctx context.Context, m *verifyMember, name string) (string, error) {
	var why string
	for {
		p, err := m.c.Kube.CoreV1().Pods(v.objs.namespace).Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			var ok bool
			if ok, why = podState(p); ok {
				return fmt.Sprintf("pod %s on node %s", name, p.Spec.NodeName), nil
			}
		} else if ctx.Err() == nil { // else keep what held the pod up
			why = err.Error()
		}
		if err := sleepCtx(ctx, 250*time.Millisecond); err != nil {
			return why, err
		}
	}
}

// podState says whether a pod is as far as verify needs it (Ready for a
// server, started for the client) and, if not, why in a few words.
func podState(p *corev1.Pod) (bool, string) {
	for _, c := range p.Status.ContainerStatuses {
		switch {
		case c.State.Waiting != nil && c.State.Waiting.Reason != "" && c.State.Waiting.Reason != "ContainerCreating":
			return false, fmt.Sprintf("pod %s: %s: %s", p.Name, c.State.Waiting.Reason, c.State.Waiting.Message)
		case p.Spec.RestartPolicy == corev1.RestartPolicyNever && (c.State.Running != nil || c.State.Terminated != nil):
			return true, ""
		case c.Ready:
			return true, ""
		}
	}
	if p.Spec.NodeName == "" {
		return false, fmt.Sprintf("pod %s is not scheduled", p.Name)
	}
	image := ""
	if len(p.Spec.Containers) > 0 {
		image = " (image " + p.Spec.Containers[0].Image + ")"
	}
	return false, fmt.Sprintf("pod %s%s is %s on node %s", p.Name, image, p.Status.Phase, p.Spec.NodeName)
}

// imported waits for the client cluster's ServiceImport to name every
// server cluster and have a ClusterSetIP, and for its EndpointSlices to
// hold a ready endpoint of each: a cluster named in the import whose
// endpoints have not arrived yet would not be chosen by locality, and the
// connection step would show the wrong cluster answering.
func (v *verification) imported(ctx context.Context) (string, error) {
	var why string
	for {
		var err error
		var done bool
		if done, why, err = v.importedOnce(ctx); done || err != nil {
			return why, err
		}
		if err := sleepCtx(ctx, 250*time.Millisecond); err != nil {
			return why, err
		}
	}
}

// importedOnce reads the import once: whether it is complete, and what
// it has (or lacks).
func (v *verification) importedOnce(ctx context.Context) (bool, string, error) {
	ns := v.objs.namespace
	si, err := v.client.c.MCS.MulticlusterV1beta1().ServiceImports(ns).Get(ctx, verifyService, metav1.GetOptions{})
	if err != nil {
		return false, err.Error(), nil
	}
	var from []string
	for _, c := range si.Status.Clusters {
		from = append(from, c.Cluster)
	}
	slices.Sort(from)
	got := fmt.Sprintf("ServiceImport %s/%s has IPs %v, clusters %v", ns, verifyService, si.Spec.IPs, from)
	if len(si.Spec.IPs) == 0 || slices.ContainsFunc(v.servers, func(m *verifyMember) bool { return !slices.Contains(from, m.id) }) {
		return false, got, nil
	}
	list, err := v.client.c.Kube.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{
		LabelSelector: labels.Set{mcsv1beta1.LabelServiceName: verifyService}.String()})
	if err != nil {
		return false, got + "; its EndpointSlices: " + err.Error(), nil
	}
	ready := readyBySource(list.Items)
	var counts []string
	complete := true
	for _, m := range v.servers {
		counts = append(counts, fmt.Sprintf("%s %d", m.id, ready[m.id]))
		complete = complete && ready[m.id] > 0
	}
	got += "; ready endpoints " + strings.Join(counts, ", ")
	if !complete {
		return false, got, nil
	}
	v.clusterSetIP = si.Spec.IPs[0]
	return true, fmt.Sprintf("ServiceImport %s/%s, ClusterSetIP %s, ready endpoints from %s", ns, verifyService, v.clusterSetIP, strings.Join(counts, ", ")), nil
}

// startClient creates the client pod, waits for it to start and follows
// its log.
func (v *verification) startClient(ctx context.Context) (string, error) {
	// The client runs as long as verify could need it; cleanup ends it.
	pod := v.objs.clientPod(4 * v.timeout)
	if _, err := v.client.c.Kube.CoreV1().Pods(v.objs.namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return "", fmt.Errorf("creating pod %s/%s: %w", v.objs.namespace, verifyClientPod, err)
	}
	detail, err := v.podReady(ctx, v.client, verifyClientPod)
	if err != nil {
		return detail, err
	}
	// Followed for the rest of the run, not the step: cleanup ends it.
	stream, err := v.client.c.Kube.CoreV1().Pods(v.objs.namespace).GetLogs(verifyClientPod, &corev1.PodLogOptions{Follow: true}).Stream(context.WithoutCancel(ctx))
	if err != nil {
		return "", fmt.Errorf("following the log of pod %s: %w", verifyClientPod, err)
	}
	v.events = follow(stream)
	return detail, nil
}

// follow reads client events from a log until it ends.
func follow(r io.ReadCloser) <-chan received {
	ch := make(chan received, 64)
	go func() {
		defer close(ch)
		defer r.Close()
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			if e, ok := probe.Parse(sc.Text()); ok {
				ch <- received{e, time.Now()}
			}
		}
	}()
	return ch
}

// next is the client's next event; false when its log ended or ctx did.
func (v *verification) next(ctx context.Context) (received, error) {
	select {
	case e, ok := <-v.events:
		if !ok {
			return received{}, fmt.Errorf("the client pod stopped: %s", v.lastEventErr)
		}
		if e.Err != "" {
			v.lastEventErr = e.Err
		}
		return e, nil
	case <-ctx.Done():
		return received{}, ctx.Err()
	}
}

// resolve checks the client's lookup: the name resolves, in the pod, to
// the ClusterSetIP of the import.
func (v *verification) resolve(ctx context.Context) (string, error) {
	for {
		e, err := v.next(ctx)
		if err != nil {
			return "", err
		}
		if e.Step != "resolve" {
			continue
		}
		if e.Err != "" {
			return "", fmt.Errorf("%s did not resolve in the pod (%d attempts): %s", v.objs.host(), e.Attempts, e.Err)
		}
		detail := fmt.Sprintf("%s → %s in the pod after %d attempt(s), %dms", v.objs.host(), strings.Join(e.Addrs, ", "), e.Attempts, e.Millis)
		if !slices.Contains(e.Addrs, v.clusterSetIP) {
			return "", fmt.Errorf("%s, not the ClusterSetIP %s", detail, v.clusterSetIP)
		}
		return detail, nil
	}
}

// awaitReply waits for a connection answered by a cluster accepted by
// ok, counting the attempts before it that failed.
func (v *verification) awaitReply(ctx context.Context, ok func(reply string) bool) (string, error) {
	for {
		e, err := v.next(ctx)
		if err != nil {
			if v.lastEventErr != "" && errors.Is(err, context.DeadlineExceeded) {
				err = fmt.Errorf("%w; the last connection failed: %s", err, v.lastEventErr)
			}
			return "", err
		}
		if e.Step != "connect" {
			continue
		}
		if e.Reply != "" {
			if ok(e.Reply) {
				return e.Reply, nil
			}
			v.otherAnswers++
		}
		if e.Err != "" {
			v.failedConnected++
		}
	}
}

func (v *verification) failedSoFar() string {
	s := ", no connection failed"
	if v.failedConnected > 0 {
		s = fmt.Sprintf(", %d connection(s) failed before", v.failedConnected)
	}
	if v.otherAnswers > 0 {
		s += fmt.Sprintf(", %d answer(s) from another cluster first", v.otherAnswers)
	}
	return s
}

// cleanup deletes the namespace verify made in every cluster, whatever
// happened before; it is reported as a step of its own.
func (v *verification) cleanup(ctx context.Context) {
	v.step(ctx, "cleanup", func(ctx context.Context) (string, error) {
		var deleted []string
		var errs []error
		for _, m := range append([]*verifyMember{v.client}, v.servers...) {
			if !m.made || slices.Contains(deleted, m.id) {
				continue
			}
			err := m.c.Kube.CoreV1().Namespaces().Delete(ctx, v.objs.namespace, metav1.DeleteOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("deleting namespace %s in %s: %w", v.objs.namespace, m.id, err))
				continue
			}
			deleted = append(deleted, m.id)
		}
		return fmt.Sprintf("namespace %s deleted in %s", v.objs.namespace, strings.Join(deleted, ", ")), errors.Join(errs...)
	})
}

func (v *verification) table(w io.Writer, wide bool) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STEP\tOK\tTIME\tDETAIL")
	for _, s := range v.steps {
		ok := "yes"
		if !s.OK {
			ok = "NO"
		}
		detail := s.Detail
		if !wide && len(detail) > 120 {
			detail = detail[:117] + "..."
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Step, ok, s.Took.Round(time.Millisecond), detail)
	}
	tw.Flush()
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
