package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/rest"

	"github.com/isthmus-dev/isthmus/cmd/internal/buildinfo"
	"github.com/isthmus-dev/isthmus/cmd/internal/kube"
	"github.com/isthmus-dev/isthmus/cmd/internal/logging"
	"github.com/isthmus-dev/isthmus/cmd/internal/memlimit"
	"github.com/isthmus-dev/isthmus/cmd/internal/serve"
	"github.com/isthmus-dev/isthmus/mcs/agent"
	"github.com/isthmus-dev/isthmus/mcs/setup"
)

// role is one of the daemon's roles. Alone (`isthmus <name>`) its flags
// have their plain names; in `isthmus all` they are prefixed with
// "<name>-", so that two roles' flags never collide.
type role struct {
	name  string
	about string
	// metricsAddr is the default of --metrics-addr when the role runs alone.
	metricsAddr string
	// facts: the role reads the cluster's facts (e.facts), which the
	// process then takes as its own flags.
	facts bool
	// flags registers the role's own flags in fs, each name prefixed with
	// prefix, and returns the role's entry point. The entry point checks
	// its flags before it contacts anything, registers its metrics and
	// readiness in e, and runs until ctx ends.
	flags func(fs *flag.FlagSet, prefix string) func(ctx context.Context, e *env, log *slog.Logger) error
}

// roles lists the roles this binary runs, each in its own file; `isthmus
// all` runs every one of them.
func roles() []role {
	return []role{
		agentRole(),
		dnsRole(),
		tunnelRole(),
		xdsRole(),
	}
}

// allMetricsAddr is where `isthmus all` serves /metrics, /healthz and
// /readyz for every role at once.
const allMetricsAddr = ":9470"

// envPrefix starts every environment variable a flag can be given by:
// --cluster-id is ISTHMUS_CLUSTER_ID, --tunnel-endpoint ISTHMUS_TUNNEL_ENDPOINT.
const envPrefix = "ISTHMUS_"

// common are the flags every role shares, with one meaning everywhere.
type common struct {
	kubeconfig, context                              string
	brokerKubeconfig, brokerContext, brokerNamespace string
	brokerSecret                                     string
	clusterID                                        string
	metricsAddr                                      string
	qps                                              float64
	burst                                            int
	shutdownDelay                                    time.Duration
	metricsReusePort                                 bool
	memoryLimit                                      string
	log                                              logging.Flags
}

func (c *common) register(fs *flag.FlagSet, metricsAddr string) {
	fs.StringVar(&c.kubeconfig, "kubeconfig", "", "kubeconfig of this cluster (default: in-cluster, then $KUBECONFIG, then ~/.kube/config)")
	fs.StringVar(&c.context, "context", "", "context in --kubeconfig (default: its current context)")
	fs.StringVar(&c.brokerKubeconfig, "broker-kubeconfig", "", "kubeconfig of the broker (default: the isthmus-system/isthmus-broker Secret that isthmusctl join wrote in this cluster)")
	fs.StringVar(&c.brokerContext, "broker-context", "", "context in --broker-kubeconfig")
	fs.StringVar(&c.brokerSecret, "broker-secret", setup.BrokerSecret, "Secret in "+setup.MemberNamespace+" holding the broker kubeconfig (key "+setup.BrokerSecretKey+") when --broker-kubeconfig is not given")
	fs.StringVar(&c.brokerNamespace, "broker-namespace", "", "namespace of the broker's records (default: the broker kubeconfig's, else isthmus-broker)")
	fs.StringVar(&c.clusterID, "cluster-id", "", "this cluster's id, a DNS label (default: its cluster.clusterset.k8s.io ClusterProperty)")
	fs.StringVar(&c.metricsAddr, "metrics-addr", metricsAddr, "address of /metrics, /healthz and /readyz (empty: none)")
	fs.Float64Var(&c.qps, "kube-api-qps", 50, "requests per second to each apiserver (client-go's default of 5 throttles a clusterset)")
	fs.IntVar(&c.burst, "kube-api-burst", 100, "request burst to each apiserver")
	fs.BoolVar(&c.metricsReusePort, "metrics-reuse-port", false, "let another process listen on --metrics-addr too (SO_REUSEPORT): the chart's tunnel, whose next pod starts on the host network beside the old one during a rolling update")
	fs.StringVar(&c.memoryLimit, "memory-limit", memlimit.Default, "the Go runtime's soft memory limit: a share of the container's memory limit (none outside a container that has one), a size such as 300Mi, or 0 for none; GOMEMLIMIT, when set, wins")
	fs.DurationVar(&c.shutdownDelay, "shutdown-delay", 0, "on SIGTERM, fail /readyz and keep serving this long before stopping, so Services stop sending here first (a rolling update with no dropped query)")
	c.log.Register(fs, "json")
}

// env is what the roles of one process share: the clients of this
// cluster and of the broker, built once on first use, the cluster id,
// the metrics registry and the readiness checks.
type env struct {
	flags  common
	facts  facts
	reg    *prometheus.Registry
	health *serve.Health

	log *slog.Logger

	mu       sync.Mutex
	local    *kube.Clients
	broker   *kube.Clients
	brokerNS string
	// brokerCred is the broker token in use; nil when the broker
	// kubeconfig holds none (a client certificate, or --broker-context).
	brokerCred *setup.BrokerCredential
	id         string
	// waiting is what a start-up read waits for, nil when none does.
	waiting atomic.Pointer[string]
}

// Local returns this cluster's clients.
func (e *env) Local() (*kube.Clients, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.localLocked()
}

func (e *env) localLocked() (*kube.Clients, error) {
	if e.local != nil {
		return e.local, nil
	}
	cfg, err := kube.Config(e.flags.kubeconfig, e.flags.context)
	if err != nil {
		return nil, fmt.Errorf("loading this cluster's kubeconfig: %w", err)
	}
	c, err := kube.NewClients(cfg, float32(e.flags.qps), e.flags.burst)
	if err != nil {
		return nil, err
	}
	e.local = c
	return c, nil
}

// Broker returns the broker's clients and the namespace of its records.
func (e *env) Broker(ctx context.Context) (*kube.Clients, string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.broker != nil {
		return e.broker, e.brokerNS, nil
	}
	local, err := e.localLocked()
	if err != nil {
		return nil, "", err
	}
	// The credential re-reads the stored token, so a renewed one is used
	// without a restart, and fails readiness on a 401. A context of a
	// kubeconfig file is taken as it is.
	var cfg *rest.Config
	var ns string
	var cred *setup.BrokerCredential
	if e.flags.brokerContext != "" {
		err = e.retryStart(ctx, "the broker credential", func(ctx context.Context) (err error) {
			_, ns, err = setup.BrokerConfigFrom(ctx, local.Kube, e.flags.brokerKubeconfig, e.flags.brokerSecret)
			return err
		})
		if err == nil {
			cfg, err = kube.Config(e.flags.brokerKubeconfig, e.flags.brokerContext)
		}
	} else {
		err = e.retryStart(ctx, "the broker credential", func(ctx context.Context) (err error) {
			cfg, ns, cred, err = setup.NewBrokerCredential(ctx, setup.CredentialConfig{Local: local.Kube, Path: e.flags.brokerKubeconfig,
				Secret: e.flags.brokerSecret, Log: e.log.With("part", "broker-credential"), Registry: e.reg})
			return err
		})
	}
	if err != nil {
		return nil, "", err
	}
	if cred != nil {
		e.health.Add("broker-credential", cred.Ready)
		go cred.Run(ctx)
	}
	e.brokerCred = cred
	if e.flags.brokerNamespace != "" {
		ns = e.flags.brokerNamespace
	}
	c, err := kube.NewClients(cfg, float32(e.flags.qps), e.flags.burst)
	if err != nil {
		return nil, "", err
	}
	e.broker, e.brokerNS = c, ns
	return c, ns, nil
}

// BrokerCredential is the broker token Broker's clients carry, nil when
// they carry none or Broker was not called.
func (e *env) BrokerCredential() *setup.BrokerCredential {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.brokerCred
}

// ClusterID returns this cluster's id: --cluster-id, or the ClusterProperty,
// refusing when they disagree.
func (e *env) ClusterID(ctx context.Context) (string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.id != "" {
		return e.id, nil
	}
	local, err := e.localLocked()
	if err != nil {
		return "", err
	}
	var id string
	err = e.retryStart(ctx, "the cluster id", func(ctx context.Context) (err error) {
		id, err = agent.ClusterID(ctx, local.Dynamic, e.flags.clusterID)
		return err
	})
	if err != nil {
		return "", err
	}
	e.id = id
	return id, nil
}

// runRoles parses args for the named roles and runs them in this process
// until ctx ends or one of them fails, which stops the others. Every role
// reports through one /metrics, /healthz and /readyz server. With log nil
// it logs to stderr as the flags say.
func runRoles(ctx context.Context, name string, rs []role, args []string, log *slog.Logger, stderr io.Writer) error {
	fs := flag.NewFlagSet("isthmus "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	e := &env{reg: serve.NewRegistry(), health: serve.NewHealth(), log: log}
	e.reg.MustRegister(buildinfo.Read().Collector())
	metricsAddr, prefix := allMetricsAddr, true
	if len(rs) == 1 {
		metricsAddr, prefix = rs[0].metricsAddr, false
	}
	e.flags.register(fs, metricsAddr)
	for _, r := range rs {
		if r.facts {
			e.facts.register(fs)
			break
		}
	}
	entries := make([]func(context.Context, *env, *slog.Logger) error, len(rs))
	var about []string
	for i, r := range rs {
		// Not ready until the role registers its own check, under its
		// name, which replaces this one: a readiness probe must not pass
		// while a role is still starting (or failing to).
		e.health.Add(r.name, e.startingCheck)
		p := ""
		if prefix {
			p = r.name + "-"
		}
		entries[i] = r.flags(fs, p)
		about = append(about, fmt.Sprintf("  %-7s %s", r.name, r.about))
	}
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: isthmus %s [flags]\n\n%s\n\n", name, strings.Join(about, "\n"))
		if prefix {
			fmt.Fprintln(stderr, "Each role's own flags carry its name as a prefix (--dns-listen is `isthmus dns --listen`).")
		}
		fmt.Fprintf(stderr, "Every flag can also be set by the environment: --cluster-id by %sCLUSTER_ID, and so on;\na flag on the command line wins.\n\nFlags:\n", envPrefix)
		fs.PrintDefaults()
	}
	if err := parseWithEnv(fs, args, os.LookupEnv); err != nil {
		return err
	}
	if log == nil {
		var err error
		if log, err = logging.New(stderr, e.flags.log); err != nil {
			return err
		}
	}
	if !prefix {
		log = log.With("role", rs[0].name)
	}
	e.log = log
	if err := setMemoryLimit(e.flags.memoryLimit, log); err != nil {
		return err
	}

	parts := make([]serve.Part, 0, len(rs)+1)
	for i, r := range rs {
		rlog := log
		if prefix {
			rlog = log.With("role", r.name)
		}
		parts = append(parts, serve.Part{Name: r.name, Run: func(ctx context.Context) error { return entries[i](ctx, e, rlog) }})
	}
	parts = append(parts, serve.Part{Name: "metrics", Run: func(ctx context.Context) error {
		return serve.Run(ctx, e.flags.metricsAddr, e.flags.metricsReusePort, e.reg, e.health, log)
	}})
	// One part ending ends the process: a supervisor restarts it whole.
	return serve.Group(lameDuck(ctx, e.flags.shutdownDelay, e.health, log), parts...)
}

// setMemoryLimit applies --memory-limit, unless GOMEMLIMIT is set: the
// runtime has applied that one already.
func setMemoryLimit(value string, log *slog.Logger) error {
	if v, ok := os.LookupEnv("GOMEMLIMIT"); ok {
		log.Info("memory limit from GOMEMLIMIT", "GOMEMLIMIT", v)
		return nil
	}
	n, from, err := memlimit.Resolve(value, func() (int64, bool) { return memlimit.CgroupLimit("/") })
	if err != nil {
		return fmt.Errorf("--memory-limit %w", err)
	}
	if n > 0 {
		debug.SetMemoryLimit(n)
	}
	log.Info("memory limit", "bytes", n, "from", from)
	return nil
}

// lameDuck is ctx, ended delay after ctx ends; meanwhile /readyz fails,
// so the endpoint leaves its Services while it still answers.
func lameDuck(ctx context.Context, delay time.Duration, health *serve.Health, log *slog.Logger) context.Context {
	if delay <= 0 {
		return ctx
	}
	late, cancel := context.WithCancel(context.WithoutCancel(ctx))
	go func() {
		<-ctx.Done()
		health.Add("shutdown", func() error { return errors.New("shutting down") })
		log.Info("shutting down: not ready, serving on meanwhile", "delay", delay)
		time.Sleep(delay)
		cancel()
	}()
	return late
}

// parseWithEnv parses args, then gives every flag not on the command line
// the value of its environment variable (ISTHMUS_ and the flag's name in
// capitals, dashes as underscores), if set. Stray arguments, usually a
// mistyped flag, are refused.
func parseWithEnv(fs *flag.FlagSet, args []string, lookup func(string) (string, bool)) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] {
			return
		}
		name := envName(f.Name)
		if v, ok := lookup(name); ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("environment variable %s=%q (--%s): %w", name, v, f.Name, err))
			}
		}
	})
	return errors.Join(errs...)
}

func envName(flagName string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// namespacedName reads a NAMESPACE/NAME flag value (--gateway-service,
// --ca-secret); the error names the flag.
func namespacedName(flag, value string) (ns, name string, err error) {
	ns, name, ok := strings.Cut(value, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return "", "", fmt.Errorf("--%s %q: want NAMESPACE/NAME", flag, value)
	}
	return ns, name, nil
}
