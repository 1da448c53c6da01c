package agent

import (
	"context"

	"github.com/isthmus-dev/isthmus/mcs/election"
)

// LeaseName is the member-cluster Lease through which agent replicas elect
// their leader.
const LeaseName = "isthmus-agent"

// elect runs the agent's work while this replica leads. Losing the lead
// ends the agent with an error, so that its process restarts as a clean
// standby instead of writing alongside the new leader.
func (a *Agent) elect(ctx context.Context) error {
	return election.Run(ctx, election.Config{
		Client: a.cfg.Local, Namespace: a.cfg.LeaderElectionNamespace, Name: LeaseName, Identity: a.cfg.Identity, Log: a.log,
	}, func(ctx context.Context) error { a.lead(ctx); return nil })
}
