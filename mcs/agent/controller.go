package agent

import (
	"context"
	"log/slog"
	"time"

	"golang.org/x/time/rate"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"k8s.io/client-go/util/workqueue"
)

// controller is a named work queue of namespace/name keys and the function
// that brings one key's objects to their desired state, in the shape of
// sample-controller's loop: a key is retried with backoff while sync fails
// and forgotten once it succeeds.
type controller struct {
	name    string
	queue   workqueue.TypedRateLimitingInterface[string]
	sync    func(ctx context.Context, key string) error
	log     *slog.Logger
	metrics *metrics
}

func newController(name string, sync func(context.Context, string) error, log *slog.Logger, m *metrics) *controller {
	return &controller{
		name: name,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			// Per key, retries back off from 10 ms to at most 30 s (client-go's
			// default reaches 1000 s, far too long after a broker outage);
			// overall, retries are held to 50/s.
			workqueue.NewTypedMaxOfRateLimiter(
				workqueue.NewTypedItemExponentialFailureRateLimiter[string](10*time.Millisecond, 30*time.Second),
				&workqueue.TypedBucketRateLimiter[string]{Limiter: rate.NewLimiter(rate.Limit(50), 300)}),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: name}),
		sync:    sync,
		log:     log.With("controller", name),
		metrics: m,
	}
}

func (c *controller) enqueue(key string) { c.queue.Add(key) }

// run works the queue until ctx ends.
func (c *controller) run(ctx context.Context, workers int) {
	go func() {
		<-ctx.Done()
		c.queue.ShutDown()
	}()
	done := make(chan struct{})
	for range workers {
		go func() {
			for c.next(ctx) {
			}
			done <- struct{}{}
		}()
	}
	for range workers {
		<-done
	}
}

func (c *controller) next(ctx context.Context) bool {
	key, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(key)
	c.metrics.queueDepth.WithLabelValues(c.name).Set(float64(c.queue.Len()))
	began := time.Now()
	err := c.sync(ctx, key)
	c.metrics.reconcile.WithLabelValues(c.name, result(err)).Observe(time.Since(began).Seconds())
	if err != nil {
		// A failing key backs off exponentially; other keys keep flowing.
		// Write conflicts are expected with informer caches and retried
		// quietly.
		level := slog.LevelWarn
		if apierrors.IsConflict(err) {
			level = slog.LevelDebug
		}
		c.log.Log(ctx, level, "reconcile failed, will retry", "key", key, "err", err, "retries", c.queue.NumRequeues(key))
		c.queue.AddRateLimited(key)
		return true
	}
	c.queue.Forget(key)
	return true
}

func result(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}
