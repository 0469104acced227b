package relay

import (
	"context"
	"fmt"
	"sync"
)

// service is one of the relay's background jobs (claimer, completer,
// lease keeper, ...). Start launches its goroutine and returns; Stop ends
// it and returns once it has ended, or when ctx ends first. Stop is safe
// before Start and twice; a stopped service may be started again.
type service interface {
	Start(ctx context.Context) error
	Stop(ctx context.Context) error
}

// startStop is the lifecycle the relay's services share: one goroutine
// per start, run until Stop cancels its context. It keeps the values of
// the context Start was given but not its cancellation: a service runs
// until it is stopped, whatever the caller's context does.
type startStop struct {
	name string

	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{} // closed when run has returned; nil when not started
}

// start runs run in a goroutine, or fails when the service is running.
func (s *startStop) start(ctx context.Context, run func(ctx context.Context)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done != nil {
		return fmt.Errorf("%s: already started", s.name)
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	s.cancel, s.done = cancel, done
	go func() {
		defer close(done)
		run(ctx)
	}()
	return nil
}

// stop cancels the goroutine and waits for it to return. When ctx ends
// first it returns ctx's error and the service counts as running still
// (stop may be called again).
func (s *startStop) stop(ctx context.Context) error {
	s.mu.Lock()
	cancel, done := s.cancel, s.done
	s.mu.Unlock()
	if done == nil {
		return nil
	}
	cancel()
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("%s: stop: %w", s.name, context.Cause(ctx))
	}
	s.mu.Lock()
	if s.done == done {
		s.cancel, s.done = nil, nil
	}
	s.mu.Unlock()
	return nil
}

// running reports whether the service was started and not yet stopped.
func (s *startStop) running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.done != nil
}

// startAll starts services in order. When one fails, those already
// started are stopped in reverse order, so nothing is left half started.
func startAll(ctx context.Context, services []service) error {
	for i, s := range services {
		if err := s.Start(ctx); err != nil {
			// Stopping is bounded by each service's own drain.
			_ = stopAll(context.WithoutCancel(ctx), services[:i])
			return err
		}
	}
	return nil
}

// stopAll stops services in reverse order, each after the ones started
// after it, and returns the first error (it stops the rest regardless).
func stopAll(ctx context.Context, services []service) error {
	var first error
	for i := len(services) - 1; i >= 0; i-- {
		if err := services[i].Stop(ctx); err != nil && first == nil {
			first = err
		}
	}
	return first
}
