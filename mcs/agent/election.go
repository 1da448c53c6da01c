package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// LeaseName is the member-cluster Lease through which agent replicas elect
// their leader.
const LeaseName = "isthmus-agent"

// elect runs the agent's work while this replica leads. Losing the lead
// ends the agent with an error, so that its process restarts as a clean
// standby instead of writing alongside the new leader.
func (a *Agent) elect(ctx context.Context) error {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: LeaseName, Namespace: a.cfg.LeaderElectionNamespace},
		Client:     a.cfg.Local.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: a.cfg.Identity},
	}
	if a.cfg.Identity == "" {
		return errors.New("leader election needs an identity for this replica")
	}
	lost := make(chan struct{})
	elector, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		Name:            LeaseName,
		LeaseDuration:   15 * time.Second,
		RenewDeadline:   10 * time.Second,
		RetryPeriod:     2 * time.Second,
		ReleaseOnCancel: true,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				a.log.Info("leading", "identity", a.cfg.Identity)
				a.lead(ctx)
			},
			OnStoppedLeading: func() { close(lost) },
			OnNewLeader: func(id string) {
				if id != a.cfg.Identity {
					a.log.Info("standing by", "leader", id)
				}
			},
		},
	})
	if err != nil {
		return fmt.Errorf("setting up leader election: %w", err)
	}
	elector.Run(ctx)
	select {
	case <-lost:
		if ctx.Err() != nil {
			return nil
		}
		return errors.New("lost the leader election; restarting as a standby")
	default:
		return nil
	}
}
