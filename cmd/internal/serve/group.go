package serve

import (
	"context"
	"errors"
	"fmt"
)

// Part is one long-running piece of a process or of a role: a server, a
// watch, a role.
type Part struct {
	// Name prefixes the part's error ("dns: ..."); empty adds nothing.
	Name string
	// Run works until ctx ends (then it returns nil or ctx's error) or it
	// fails.
	Run func(ctx context.Context) error
}

// Group runs every part until ctx ends or one part returns, then cancels
// the others and waits for all of them. One part ending ends the group,
// even without an error: the parts only make sense together, and a
// supervisor restarts the process whole. It returns the parts' errors,
// joined; an error that is only the cancellation, or the end of the
// caller's ctx, is none.
func Group(parent context.Context, parts ...Part) error {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	errs := make(chan error, len(parts))
	for _, p := range parts {
		go func() {
			err := p.Run(ctx)
			cancel()
			if err != nil && !errors.Is(err, context.Canceled) && p.Name != "" {
				err = fmt.Errorf("%s: %w", p.Name, err)
			}
			errs <- err
		}()
	}
	var all []error
	for range parts {
		err := <-errs
		if ended := parent.Err(); ended != nil && errors.Is(err, ended) {
			continue
		}
		if err != nil && !errors.Is(err, context.Canceled) {
			all = append(all, err)
		}
	}
	return errors.Join(all...)
}
