// Package election runs work only while this replica holds a Lease, for
// the roles that run as several replicas of which one may act at a time:
// the agent (one writer to the broker) and the tunnel (one device with the
// cluster's WireGuard key). It is client-go's leader election with the
// choices both need made once: the Lease is released on a clean stop, so
// a standby takes over at once, and losing it ends the work with an error,
// so the process restarts as a clean standby.
package election

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/util/retry"
)

// The default timings, client-go's recommended ones: a dead leader blocks
// a standby for at most LeaseDuration.
const (
	DefaultLeaseDuration = 15 * time.Second
	DefaultRenewDeadline = 10 * time.Second
	DefaultRetryPeriod   = 2 * time.Second
)

// ErrLost is returned when this replica lost the Lease while its work ran.
var ErrLost = errors.New("lost the leader election; restarting as a standby")

// Config is what Run needs.
type Config struct {
	// Client reaches the cluster holding the Lease.
	Client kubernetes.Interface
	// Namespace and Name name the Lease.
	Namespace, Name string
	// Identity names this replica in the Lease; unique among replicas.
	Identity string
	// LeaseDuration is how long a dead leader's Lease blocks a standby,
	// RenewDeadline how long the leader retries renewing before it gives
	// up, RetryPeriod how often a standby tries to take the Lease. Zero
	// takes the default.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// Log says when this replica leads and whom it stands by for.
	Log *slog.Logger
}

// Run runs work while this replica holds the Lease, and waits for work
// to finish its clean shutdown before it returns. It returns work's error
// when work fails, ErrLost when the Lease was lost while ctx was live,
// and nil when ctx ended (the Lease is then released) or work returned
// nil on its own.
func Run(ctx context.Context, cfg Config, work func(context.Context) error) error {
	if cfg.Identity == "" {
		return errors.New("leader election needs an identity for this replica")
	}
	lease := cfg.Namespace + "/" + cfg.Name
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: cfg.Namespace, Name: cfg.Name},
		Client:     cfg.Client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: cfg.Identity},
	}
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// work runs on its own goroutine, and the elector may return before
	// it has finished: done is closed when it has.
	var (
		workErr error
		lost    bool
		started = make(chan struct{})
		done    = make(chan struct{})
	)
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		// Released below, once work has returned: the elector's own
		// release comes as soon as ctx ends, while work may still hold
		// what the Lease guards (the tunnel's device and UDP port), and a
		// stand-by on the same node would take it too early.
		Lock: lock, Name: cfg.Name, ReleaseOnCancel: false,
		LeaseDuration: orDefault(cfg.LeaseDuration, DefaultLeaseDuration),
		RenewDeadline: orDefault(cfg.RenewDeadline, DefaultRenewDeadline),
		RetryPeriod:   orDefault(cfg.RetryPeriod, DefaultRetryPeriod),
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(leading context.Context) {
				close(started)
				defer close(done)
				cfg.Log.Info("leading", "lease", lease, "identity", cfg.Identity)
				workErr = work(leading)
				// The elector ends leading's context when the Lease is
				// lost; work ending while ctx is still live means that.
				lost = leading.Err() != nil && parent.Err() == nil
				cancel()
			},
			OnStoppedLeading: func() {
				cfg.Log.Info("not leading", "lease", lease, "identity", cfg.Identity)
				cancel()
			},
			OnNewLeader: func(leader string) {
				if leader != cfg.Identity {
					cfg.Log.Info("standing by", "lease", lease, "leader", leader)
				}
			},
		},
	})
	if err != nil {
		return fmt.Errorf("setting up leader election on Lease %s: %w", lease, err)
	}
	le.Run(ctx)
	select {
	case <-started:
		<-done
	default:
		return nil
	}
	if err := release(lock, cfg.Identity); err != nil {
		cfg.Log.Warn("releasing the Lease; a stand-by takes it when it expires", "lease", lease, "err", err)
	}
	switch {
	case workErr != nil && !errors.Is(workErr, context.Canceled):
		return workErr
	case lost:
		return ErrLost
	}
	return nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// release hands the Lease back if this replica still holds it, as
// client-go's elector does on cancel: no holder and a one-second
// duration, so a stand-by takes it at its next try. It reads the Lease
// afresh and retries on a conflict: a renewal the elector sent just as
// ctx ended is canceled on the client but may still land on the server
// after our read, and the release must not lose to it.
func release(lock *resourcelock.LeaseLock, identity string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		rec, _, err := lock.Get(ctx)
		if err != nil {
			return err
		}
		if rec.HolderIdentity != identity {
			return nil
		}
		now := metav1.NewTime(time.Now())
		return lock.Update(ctx, resourcelock.LeaderElectionRecord{
			LeaderTransitions: rec.LeaderTransitions, LeaseDurationSeconds: 1, RenewTime: now, AcquireTime: now,
		})
	})
}
