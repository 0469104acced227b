// Package relay is the delivery engine of outbox-relay: it claims intents
// from outbox.intents, makes each intent's calls through a provider.Provider
// in contract order, and records the outcome.
//
// Any number of relays may run against one database. Each claims batches
// with FOR UPDATE SKIP LOCKED under a short lease on the database clock,
// renewed by a heartbeat; a crashed relay's intents are taken over once its
// lease expires, and a relay that lost its lease cannot overwrite the new
// owner's result. Idle relays are woken by a NOTIFY that producers send only
// while a relay is waiting, with a polling fallback.
//
//	r, err := relay.New(pool, talkjsClient, relay.Config{Logger: logger})
//	if err != nil { ... }
//	err = r.Run(ctx) // until ctx is cancelled; then drains and returns
package relay

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/provider"
)

// Relay delivers intents. Create it with New; run it with Start and Stop,
// or Run.
type Relay struct {
	cfg      Config
	pool     *pgxpool.Pool
	provider provider.Provider
	log      *slog.Logger
	metrics  *metrics
	gate     *gate
	retainer *retainer
	// rate is the adaptive rate limit (rate.go), nil when there is none.
	rate *adaptiveRate
	// beatMu serialises heartbeats; published is the rate the next one
	// publishes (0 before the first).
	beatMu        sync.Mutex
	published     float64
	relaysChanged chan struct{} // another relay came or went

	epoch       time.Time     // origin of the monotonic lease clock
	callTimeout time.Duration // the longest one call may take

	wake      chan struct{} // something may be claimable now
	notified  chan struct{} // a producer's NOTIFY arrived
	slots     chan struct{} // one token per intent in flight
	results   chan *result
	held      *leaseSet
	users     *userFlights
	batchOff  atomic.Bool // the API has no batch users endpoint: users are PUT one by one
	listening atomic.Bool // the LISTEN connection is up
	operator  operatorPause
	// parkCursor is the conversation the last unparkHeads pass ended at.
	parkCursor struct {
		sync.Mutex
		after string
	}
	dbOK     atomic.Bool  // the last database operation succeeded
	writes   atomic.Int64 // completions and heartbeats the database accepted
	started  atomic.Bool
	stopping atomic.Bool  // Stop was called: results are written with a deadline
	stopTime atomic.Int64 // when Stop was called, unix ns
	warns    *warnEvery   // retryable failures logged at most once per class per minute

	mu     sync.Mutex
	cancel context.CancelFunc // stops claiming
	done   chan struct{}      // closed when everything has stopped
}

// New returns a relay delivering the intents of pool's database through p.
// The outbox schema must already be migrated (see package migrations).
func New(pool *pgxpool.Pool, p provider.Provider, cfg Config) (*Relay, error) {
	if pool == nil {
		return nil, errors.New("relay: pool is nil")
	}
	if p == nil {
		return nil, errors.New("relay: provider is nil")
	}
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	// The longest a call may take: the provider's own bound when it has
	// one, else the lease's (a call never outlives the lease).
	callTimeout := MaxCallTimeout(cfg.Lease)
	if ct, ok := p.(callTimeouter); ok {
		callTimeout = ct.Timeout()
		if err := checkCallTimeout(callTimeout, cfg.Lease); err != nil {
			return nil, err
		}
	}
	r := &Relay{
		cfg:         cfg,
		pool:        pool,
		provider:    p,
		log:         cfg.Logger.With("relay", cfg.Name),
		metrics:     newMetrics(cfg.Registerer),
		wake:        make(chan struct{}, 1),
		notified:    make(chan struct{}, 1),
		slots:       make(chan struct{}, cfg.Concurrency),
		results:     make(chan *result, cfg.Concurrency),
		held:        newLeaseSet(),
		users:       newUserFlights(),
		epoch:       time.Now(),
		callTimeout: callTimeout,
		done:        make(chan struct{}),
	}
	registerProviderMetrics(cfg.Registerer, p)
	r.relaysChanged = make(chan struct{}, 1)
	rate, err := newAdaptiveRate(cfg, p, r.metrics)
	if err != nil {
		return nil, fmt.Errorf("relay: adaptive rate limit: %w", err)
	}
	r.rate = rate
	r.warns = newWarnEvery(warnInterval, cfg.Clock)
	r.gate = newGate(cfg.BreakerThreshold, cfg.Clock, r.onPauseChange)
	r.retainer = newRetainer(cfg.Retention, cfg.AppID, r.syncTTL(), pool, r.log, r.metrics)
	return r, nil
}

// callTimeouter is implemented by providers that bound each call
// themselves (provider/talkjs.Client): the bound must fit in the lease.
type callTimeouter interface {
	Timeout() time.Duration
}

// Name returns the relay's name, as recorded in leases and attempts.
func (r *Relay) Name() string { return r.cfg.Name }

// Start checks the database and starts delivering in the background. It
// returns an error when the outbox schema cannot be read. Call Stop to end.
func (r *Relay) Start(ctx context.Context) error {
	if !r.started.CompareAndSwap(false, true) {
		return errors.New("relay: already started")
	}
	var waiting bool
	if err := r.pool.QueryRow(ctx, schemaCheck).Scan(&waiting); err != nil {
		return fmt.Errorf("relay: read the outbox schema (is the database migrated?): %w", err)
	}
	var statementTimeout, lockTimeout string
	if err := r.pool.QueryRow(ctx, sessionTimeouts).Scan(&statementTimeout, &lockTimeout); err != nil {
		return fmt.Errorf("relay: read session timeouts: %w", err)
	}
	if statementTimeout == "0" || lockTimeout == "0" {
		r.log.Warn("the relay's database sessions have no statement or lock timeout: a row lock held by "+
			"another session can hold up the relay; make its pool with relay.ConfigurePool",
			"statement_timeout", statementTimeout, "lock_timeout", lockTimeout)
	}
	var taken bool
	if err := r.pool.QueryRow(ctx, liveRelayNamed, r.cfg.Name, r.cfg.Lease).Scan(&taken); err != nil {
		return fmt.Errorf("relay: check relay name: %w", err)
	}
	if taken {
		return fmt.Errorf("relay: another live relay is named %q: give each relay its own name", r.cfg.Name)
	}
	r.dbOK.Store(true)
	// Register before the first claim, so the rate limit is already shared
	// with the relays running.
	r.beat(ctx)
	if r.rate != nil {
		// The others take their share back at once.
		r.notifyRelays(ctx)
	}
	r.readControl(ctx)
	r.updateReadyMetric()
	// Retention runs beside delivery, never in its way: its own goroutine,
	// stopped once claiming has.
	if err := r.retainer.Start(ctx); err != nil {
		return fmt.Errorf("relay: %w", err)
	}

	// Claiming stops when runCtx ends; workers, the completer and the
	// heartbeat keep going until in-flight work is drained (see Stop).
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	workCtx, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	r.mu.Lock()
	r.cancel = cancel
	r.mu.Unlock()

	var workers sync.WaitGroup
	completerDone := make(chan struct{})
	heartbeatDone := make(chan struct{})
	hbCtx, stopHeartbeat := context.WithCancel(context.WithoutCancel(ctx))

	go func() {
		defer close(heartbeatDone)
		r.heartbeatLoop(hbCtx)
	}()
	listenerDone := make(chan struct{})
	go func() {
		defer close(listenerDone)
		r.listenLoop(runCtx)
	}()
	controlDone := make(chan struct{})
	go func() {
		defer close(controlDone)
		r.controlLoop(hbCtx)
	}()
	go func() {
		defer close(completerDone)
		r.completeLoop()
	}()
	go func() {
		defer close(r.done)
		r.claimLoop(runCtx, workCtx, &workers)
		r.retainer.Stop()
		// Claiming has stopped. Let in-flight deliveries finish, then
		// cancel the stragglers (they are released back to pending).
		drained := make(chan struct{})
		go func() { workers.Wait(); close(drained) }()
		t := time.NewTimer(r.cfg.ShutdownTimeout)
		select {
		case <-drained:
			t.Stop()
		case <-t.C:
			r.log.Warn("shutdown timeout: cancelling in-flight deliveries", "in_flight", len(r.slots))
			cancelWork()
			<-drained
		}
		cancelWork()
		close(r.results)
		<-completerDone
		stopHeartbeat()
		<-heartbeatDone
		<-controlDone
		<-listenerDone
		r.deregister()
	}()
	r.log.Info("relay started", "concurrency", r.cfg.Concurrency, "lease", r.cfg.Lease,
		"call_timeout", r.callTimeout, "max_attempts", r.cfg.MaxAttempts, "max_age", r.cfg.MaxAge)
	return nil
}

// Stop stops claiming, waits up to ShutdownTimeout for in-flight deliveries,
// releases what is left, and returns once everything has stopped. It is safe
// to call more than once and before Start.
func (r *Relay) Stop() {
	r.mu.Lock()
	cancel := r.cancel
	r.mu.Unlock()
	if cancel == nil {
		return
	}
	r.stopTime.Store(time.Now().UnixNano())
	if !r.stopping.Swap(true) {
		r.updateReadyMetric()
	}
	cancel()
	<-r.done
}

// Run starts the relay and delivers until ctx is cancelled, then stops
// gracefully.
func (r *Relay) Run(ctx context.Context) error {
	if err := r.Start(ctx); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
	case <-r.done:
	}
	r.Stop()
	r.log.Info("relay stopped")
	return nil
}

// Health describes whether the relay can deliver.
type Health struct {
	// Ready is true when the relay is running and not stopping, the
	// database is reachable, TalkJS accepts the credentials and no
	// operator has paused delivery. An open circuit breaker leaves it
	// ready: the relay is probing, and recovers by itself.
	Ready bool `json:"ready"`
	// Paused is "auth" when TalkJS refuses the credentials, "breaker" when
	// TalkJS keeps failing, "" otherwise.
	Paused string `json:"paused,omitempty"`
	// Database is false after a failed database operation, until one succeeds.
	Database bool `json:"database"`
	// Listening is true while the LISTEN connection is up.
	Listening bool `json:"listening"`
	// AuthPaused is true while TalkJS refuses the credentials.
	AuthPaused bool `json:"auth_paused"`
	// BreakerOpen is true while the circuit breaker holds delivery to
	// one probe intent at a time.
	BreakerOpen bool `json:"breaker_open"`
	// OperatorPause is the operator's pause (outbox-relay pause) as this
	// relay last read it (at most a second ago), nil when there is none.
	OperatorPause *OperatorPause `json:"operator_pause"`
	// Draining is true once the relay was told to stop: it claims
	// nothing more and finishes the deliveries under way.
	Draining bool `json:"draining"`
	// InFlight is the number of intents being delivered.
	InFlight int `json:"in_flight"`
}

// Health reports the relay's current state, for readiness probes.
func (r *Relay) Health() Health {
	paused := r.gate.paused()
	db := r.dbOK.Load()
	op := r.operator.get()
	draining := r.stopping.Load()
	return Health{
		Ready:         r.started.Load() && !draining && db && paused != pauseAuth && op == nil,
		Paused:        paused,
		Database:      db,
		Listening:     r.listening.Load(),
		AuthPaused:    paused == pauseAuth,
		BreakerOpen:   paused == pauseBreaker,
		OperatorPause: op,
		Draining:      draining,
		InFlight:      len(r.slots),
	}
}

func (r *Relay) onPauseChange(reason string, err error) {
	for _, rs := range []string{pauseAuth, pauseBreaker} {
		v := 0.0
		if rs == reason {
			v = 1
		}
		r.metrics.paused.WithLabelValues(rs).Set(v)
	}
	switch reason {
	case pauseAuth:
		r.log.Error("TalkJS refused the credentials: delivery paused, no intent is failed for it; "+
			"check TALKJS_APP_ID and TALKJS_SECRET_KEY, and this host's clock: "+
			"a clock running behind TalkJS's makes the signed tokens look expired", "error", err)
	case pauseBreaker:
		r.log.Error("TalkJS keeps failing: circuit open, probing with one intent at a time", "error", err)
	default:
		r.log.Info("TalkJS calls succeed again: delivery resumed")
	}
	r.updateReadyMetric()
	r.signal()
}

// setDB records the outcome of a database operation. It runs after every
// claim and completion, so it touches the readiness gauge only on a change.
func (r *Relay) setDB(ok bool, op string, err error) {
	if !ok {
		r.metrics.dbErrors.WithLabelValues(op).Inc()
		if r.dbOK.Swap(false) {
			r.log.Error("database unavailable", "op", op, "error", err)
			r.updateReadyMetric()
		}
	} else if !r.dbOK.Swap(true) {
		r.log.Info("database available again")
		r.updateReadyMetric()
	}
}

func (r *Relay) updateReadyMetric() {
	v := 0.0
	if r.Health().Ready {
		v = 1
	}
	r.metrics.ready.Set(v)
}

// signal wakes the claimer (non-blocking; one pending wake is enough).
func (r *Relay) signal() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func randomSuffix() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// stoppedAt is when Stop was called.
func (r *Relay) stoppedAt() time.Time { return time.Unix(0, r.stopTime.Load()) }
