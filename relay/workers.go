package relay

import (
	"context"
	"errors"
	"sync"
	"time"
)

// workerPool is the service that owns the delivery goroutines: the
// context they run under and the group that tracks them. The claimer
// starts workers into it (dispatch); Stop waits up to ShutdownTimeout for
// them to finish, then cancels the stragglers (their intents are released
// back to pending) and waits for them to return. It has no goroutine of
// its own.
type workerPool struct {
	cfg      workerPoolConfig
	log      loggerWarn
	inFlight func() int // deliveries under way, for the log

	mu     sync.Mutex
	ctx    context.Context // nil when not started
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// loggerWarn is the part of *slog.Logger the pool uses.
type loggerWarn interface {
	Warn(msg string, args ...any)
}

func newWorkerPool(cfg workerPoolConfig, log loggerWarn, inFlight func() int) *workerPool {
	return &workerPool{cfg: cfg, log: log, inFlight: inFlight}
}

// Start makes the context workers run under.
func (p *workerPool) Start(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ctx != nil {
		return errors.New("workers: already started")
	}
	p.ctx, p.cancel = context.WithCancel(context.WithoutCancel(ctx))
	return nil
}

// workCtx is the context workers run under (nil when not started).
func (p *workerPool) workCtx() context.Context {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ctx
}

// Stop lets in-flight deliveries finish for up to ShutdownTimeout (or
// until ctx ends), then cancels the rest and waits for them to return.
// Nothing may start workers once Stop has begun: the claimer is stopped
// first.
func (p *workerPool) Stop(ctx context.Context) error {
	p.mu.Lock()
	cancel := p.cancel
	p.mu.Unlock()
	if cancel == nil {
		return nil
	}
	drained := make(chan struct{})
	go func() { p.wg.Wait(); close(drained) }()
	t := time.NewTimer(p.cfg.ShutdownTimeout)
	defer t.Stop()
	select {
	case <-drained:
	case <-t.C:
		p.log.Warn("shutdown timeout: cancelling in-flight deliveries", "in_flight", p.inFlight())
	case <-ctx.Done():
		p.log.Warn("stop cancelled: cancelling in-flight deliveries", "in_flight", p.inFlight())
	}
	cancel()
	<-drained // a cancelled delivery returns at once: every call honours its context
	p.mu.Lock()
	p.ctx, p.cancel = nil, nil
	p.mu.Unlock()
	return nil
}
