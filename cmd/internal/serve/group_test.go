package serve

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestGroup(t *testing.T) {
	untilDone := func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }
	t.Run("one failure stops the rest and is named", func(t *testing.T) {
		stopped := make(chan struct{})
		err := Group(context.Background(),
			Part{"watch", func(ctx context.Context) error { <-ctx.Done(); close(stopped); return nil }},
			Part{"server", func(context.Context) error { return errors.New("port taken") }},
		)
		if err == nil || err.Error() != "server: port taken" {
			t.Errorf("Group = %v, want server: port taken", err)
		}
		select {
		case <-stopped:
		default:
			t.Error("the other part was not stopped before Group returned")
		}
	})
	t.Run("a part ending cleanly ends the group without error", func(t *testing.T) {
		if err := Group(context.Background(), Part{"a", untilDone}, Part{"b", func(context.Context) error { return nil }}); err != nil {
			t.Errorf("Group = %v, want nil", err)
		}
	})
	t.Run("the end of ctx is no error", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		if err := Group(ctx, Part{"a", untilDone}, Part{"", untilDone}); err != nil {
			t.Errorf("Group = %v, want nil", err)
		}
	})
	t.Run("every failure is reported", func(t *testing.T) {
		release := make(chan struct{})
		err := Group(context.Background(),
			Part{"a", func(context.Context) error { defer close(release); return errors.New("one") }},
			Part{"", func(context.Context) error { <-release; return errors.New("two") }},
		)
		if err == nil || !strings.Contains(err.Error(), "a: one") || !strings.Contains(err.Error(), "two") || strings.Contains(err.Error(), ": two") {
			t.Errorf("Group = %v, want both errors, the unnamed one bare", err)
		}
	})
}
