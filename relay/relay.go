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
	q        queries // every statement of the engine
	provider provider.Provider
	log      *slog.Logger
	metrics  *metrics
	gate     *gate

	// The services, in the order they start (stopped in reverse).
	keeper    *leaseKeeper
	sweeper   *sweeper
	control   *controlReader
	gauges    *gaugeReader
	completer *completer
	workers   *workerPool
	listener  *listener
	retainer  *retainer
	claimer   *claimer
	// rate is the adaptive rate limit (rate.go), nil when there is none.
	rate *adaptiveRate
	// env is what the services are handed besides their config slices.
	env serviceEnv

	callTimeout time.Duration // the longest one call may take

	slots    chan struct{} // one token per intent in flight
	held     *leaseSet
	users    *userFlights
	batchOff atomic.Bool  // the API has no batch users endpoint: users are PUT one by one
	dbOK     atomic.Bool  // the last database operation succeeded
	writes   atomic.Int64 // completions and heartbeats the database accepted
	started  atomic.Bool
	stopping atomic.Bool  // Stop was called: results are written with a deadline
	stopTime atomic.Int64 // when Stop was called, unix ns
	warns    *warnEvery   // retryable failures logged at most once per class per minute

	mu    sync.Mutex
	state lifecycle
	done  chan struct{} // closed once Stop has stopped everything
}

// lifecycle is where a relay is between New and Stop.
type lifecycle int

const (
	lifecycleNew      lifecycle = iota // created, or its Start failed
	lifecycleStarting                  // Start is under way
	lifecycleRunning                   // started
	lifecycleStopping                  // Stop is under way
	lifecycleStopped                   // stopped: it cannot be started again
)

// ErrStopped is returned by Start on a relay that has been stopped: a
// relay runs once. Create another with New.
var ErrStopped = errors.New("relay: stopped; a relay cannot be started again, create a new one with New")

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
		q:           queries{db: pool},
		provider:    p,
		log:         cfg.Logger.With("relay", cfg.Name),
		metrics:     newMetrics(cfg.Registerer),
		slots:       make(chan struct{}, cfg.Concurrency),
		held:        newLeaseSet(),
		users:       newUserFlights(),
		callTimeout: callTimeout,
	}
	r.env = serviceEnv{q: r.q, log: r.log, metrics: r.metrics, setDB: r.setDB, wake: r.signal, epoch: time.Now()}
	registerProviderMetrics(cfg.Registerer, p)
	rate, err := newAdaptiveRate(cfg, p, r.metrics)
	if err != nil {
		return nil, fmt.Errorf("relay: adaptive rate limit: %w", err)
	}
	r.rate = rate
	r.warns = newWarnEvery(warnInterval, cfg.Clock)
	r.gate = newGate(cfg.BreakerThreshold, cfg.Clock, r.onPauseChange)
	r.newServices(cfg.serviceConfigs(callTimeout))
	return r, nil
}

// newServices makes the services, each with its config slice and what
// it may touch.
func (r *Relay) newServices(sc serviceConfigs) {
	env := r.env
	r.keeper = newLeaseKeeper(env, sc.keeper, r.held, r.rate, r.provider, &r.writes)
	r.sweeper = newSweeper(env, sc.sweeper, r.keeper)
	r.control = newControlReader(env, sc.control, r.warns, r.updateReadyMetric)
	r.gauges = newGaugeReader(env, sc.gauges)
	r.completer = newCompleter(env, sc.completer, r.held, &r.writes, r.warns, r.stopBegan)
	r.workers = newWorkerPool(sc.workers, r.log, func() int { return len(r.slots) })
	r.claimer = newClaimer(env, sc.claimer, claimerDeps{gate: r.gate,
		listening: func() bool { return r.listener.listening.Load() },
		freeSlots: r.freeSlots, dispatch: r.dispatch})
	r.listener = newListener(env, sc.listener, r.claimer.notify, r.keeper.relaysChanged)
	r.retainer = newRetainer(env, sc.retention)
}

// callTimeouter is implemented by providers that bound each call
// themselves (provider/talkjs.Client): the bound must fit in the lease.
type callTimeouter interface {
	Timeout() time.Duration
}

// Name returns the relay's name, as recorded in leases and attempts.
func (r *Relay) Name() string { return r.cfg.Name }

// services are the relay's services in the order they start: those that
// keep the relay's leases and copies of the database first, then the
// completer before the workers that feed it, the workers before the
// claimer that starts them. Stopping in reverse stops claiming first,
// drains the workers, writes their results, and only then stops renewing
// the leases.
func (r *Relay) services() []service {
	return []service{r.keeper, r.sweeper, r.control, r.gauges, r.completer, r.workers,
		r.listener, r.retainer, r.claimer}
}

// Start checks the database and starts delivering in the background. It
// returns an error when the outbox schema cannot be read; nothing is left
// running then, and Start may be called again. Call Stop to end. A
// stopped relay cannot be started again (ErrStopped).
func (r *Relay) Start(ctx context.Context) error {
	if err := r.toStarting(); err != nil {
		return err
	}
	if err := r.start(ctx); err != nil {
		r.mu.Lock()
		r.state = lifecycleNew
		r.mu.Unlock()
		r.started.Store(false)
		r.updateReadyMetric()
		return err
	}
	r.mu.Lock()
	r.state, r.done = lifecycleRunning, make(chan struct{})
	r.mu.Unlock()
	r.log.Info("relay started", "concurrency", r.cfg.Concurrency, "lease", r.cfg.Lease,
		"call_timeout", r.callTimeout, "max_attempts", r.cfg.MaxAttempts, "max_age", r.cfg.MaxAge)
	return nil
}

// toStarting moves a new relay to starting, or says why it cannot start.
func (r *Relay) toStarting() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch r.state {
	case lifecycleNew:
		r.state = lifecycleStarting
		r.started.Store(true)
		return nil
	case lifecycleStopping, lifecycleStopped:
		return ErrStopped
	default:
		return errors.New("relay: already started")
	}
}

// start checks the database, registers the relay and starts the services.
func (r *Relay) start(ctx context.Context) error {
	if err := r.checkDatabase(ctx); err != nil {
		return err
	}
	r.dbOK.Store(true)
	// Register before the first claim, so the rate limit is already shared
	// with the relays running.
	r.keeper.beat(ctx)
	if r.rate != nil {
		// The others take their share back at once.
		r.notifyRelays(ctx)
	}
	r.control.read(ctx)
	r.updateReadyMetric()
	if err := startAll(ctx, r.services()); err != nil {
		r.deregister()
		return fmt.Errorf("relay: %w", err)
	}
	return nil
}

// checkDatabase reads the schema and the session's timeouts, and checks
// that no live relay has this one's name.
func (r *Relay) checkDatabase(ctx context.Context) error {
	if err := r.q.checkSchema(ctx); err != nil {
		return fmt.Errorf("relay: read the outbox schema (is the database migrated?): %w", err)
	}
	statementTimeout, lockTimeout, err := r.q.sessionTimeouts(ctx)
	if err != nil {
		return fmt.Errorf("relay: read session timeouts: %w", err)
	}
	if statementTimeout == "0" || lockTimeout == "0" {
		r.log.Warn("the relay's database sessions have no statement or lock timeout: a row lock held by "+
			"another session can hold up the relay; make its pool with relay.ConfigurePool",
			"statement_timeout", statementTimeout, "lock_timeout", lockTimeout)
	}
	taken, err := r.q.liveRelayNamed(ctx, r.cfg.Name, r.cfg.liveWithin())
	if err != nil {
		return fmt.Errorf("relay: check relay name: %w", err)
	}
	if taken {
		return fmt.Errorf("relay: another live relay is named %q: give each relay its own name", r.cfg.Name)
	}
	return nil
}

// Stop stops claiming, waits up to ShutdownTimeout for in-flight deliveries,
// releases what is left, and returns once everything has stopped. It is safe
// to call more than once, at the same time, and before Start.
func (r *Relay) Stop() {
	r.mu.Lock()
	state, done := r.state, r.done
	if state == lifecycleRunning {
		r.state = lifecycleStopping
	}
	r.mu.Unlock()
	switch state {
	case lifecycleRunning:
	case lifecycleStopping, lifecycleStopped:
		<-done
		return
	default:
		return
	}
	r.stopTime.Store(time.Now().UnixNano())
	r.stopping.Store(true)
	r.updateReadyMetric()
	// Each service bounds its own stop (the workers by ShutdownTimeout).
	_ = stopAll(context.Background(), r.services())
	r.deregister()
	r.mu.Lock()
	r.state = lifecycleStopped
	r.mu.Unlock()
	close(done)
}

// Run starts the relay and delivers until ctx is cancelled (or Stop is
// called), then stops gracefully.
func (r *Relay) Run(ctx context.Context) error {
	if err := r.Start(ctx); err != nil {
		return err
	}
	r.mu.Lock()
	done := r.done
	r.mu.Unlock()
	select {
	case <-ctx.Done():
	case <-done:
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
	op := r.control.operator.get()
	draining := r.stopping.Load()
	return Health{
		Ready:         r.started.Load() && !draining && db && paused != pauseAuth && op == nil,
		Paused:        paused,
		Database:      db,
		Listening:     r.listener.listening.Load(),
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
	if !ok && r.stopping.Load() && errors.Is(err, context.Canceled) {
		// Stop cancelled the statement: the relay's own doing, not the
		// database's, so neither logged as an outage nor counted.
		return
	}
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
func (r *Relay) signal() { r.claimer.signal() }

func randomSuffix() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// stopBegan is when Stop was called, and whether it was.
func (r *Relay) stopBegan() (time.Time, bool) {
	// stopping is set after stopTime: read it first.
	stopping := r.stopping.Load()
	return time.Unix(0, r.stopTime.Load()), stopping
}

// monotonic converts t to nanoseconds on the relay's monotonic clock.
func (r *Relay) monotonic(t time.Time) int64 { return r.env.monotonic(t) }
