package relay

import (
	"log/slog"
	"time"
)

// Each service reads its own slice of the relay's Config, cut here, in one
// place, from the validated Config (defaults applied): a service sees only
// the settings it uses, and a test can make one with nothing else.

// leaseKeeperConfig is the lease keeper's slice.
type leaseKeeperConfig struct {
	Name    string // this relay's row in outbox.relays
	Version string // recorded in that row
	// Lease is what a renewal extends a held lease to, from its start.
	Lease time.Duration
	// Interval is the time between renewals (Lease/3), and bounds each.
	Interval time.Duration
	// LiveWithin is how recent a heartbeat must be to count a relay live.
	LiveWithin time.Duration
	// RateLimit and RateBurst are the app's; the keeper sets this relay's
	// share of them (a fixed limit; the adaptive one shares by itself).
	RateLimit float64
	RateBurst int
}

// sweeperConfig is the sweeper's slice.
type sweeperConfig struct {
	Name string // this relay, left out when counting the others
	// Interval is the time between sweeps (min(Lease/10, 1s)).
	Interval time.Duration
	// Timeout bounds one sweep (the heartbeat interval).
	Timeout time.Duration
	// LiveWithin is how recent a heartbeat must be to count a relay live.
	LiveWithin time.Duration
	// MaxAttempts and MaxAge are the retry budget: an intent taken back
	// with its budget spent goes dead.
	MaxAttempts int
	MaxAge      time.Duration
	// CallTimeout is how long past its lease's end an intent with its
	// budget spent stays delivering, for a call still on its way.
	CallTimeout time.Duration
}

// controlReaderConfig is the control reader's slice.
type controlReaderConfig struct {
	Interval time.Duration // between reads of outbox.control; bounds each
}

// gaugeReaderConfig is the gauge reader's slice.
type gaugeReaderConfig struct {
	Interval time.Duration // between reads; bounds each, on the server too
}

// completerConfig is the completer's slice.
type completerConfig struct {
	Name  string // this relay, recorded in attempts
	AppID string // the TalkJS app the sync records are kept for
	// MaxAttempts and MaxAge are the retry budget.
	MaxAttempts int
	MaxAge      time.Duration
	// QueueSize is the results queue's capacity: one slot per worker.
	QueueSize int
	// StatementDeadline bounds one completion statement on the client.
	StatementDeadline time.Duration
	// ShutdownTimeout: once Stop began this long ago, a result the
	// database does not take is dropped rather than tried again.
	ShutdownTimeout time.Duration
}

// workerPoolConfig is the worker pool's slice.
type workerPoolConfig struct {
	// ShutdownTimeout is how long Stop lets deliveries run before
	// cancelling them.
	ShutdownTimeout time.Duration
}

// listenerConfig is the listener's slice.
type listenerConfig struct {
	// RetryMin and RetryMax bound the wait before reconnecting, which
	// doubles from RetryMin while connections keep failing.
	RetryMin, RetryMax time.Duration
	// ConnectTimeout bounds one connection attempt.
	ConnectTimeout time.Duration
}

// retainerConfig is retention's slice.
type retainerConfig struct {
	RetentionConfig
	AppID string // the TalkJS app whose sync records are this relay's
	// SyncTTL: this app's sync records older than this are deleted; 0: all.
	SyncTTL time.Duration
}

// claimerConfig is the claimer's slice.
type claimerConfig struct {
	Name  string // this relay, the lease owner
	AppID string // the TalkJS app whose sync records decide skips
	// BatchSize is the most intents one claim takes.
	BatchSize int
	// PollInterval is the longest an idle claimer sleeps.
	PollInterval time.Duration
	// Lease is each claimed intent's lease.
	Lease time.Duration
	// SyncTTL is the skip window of unchanged PUTs; 0: no skipping.
	SyncTTL time.Duration
	// StatementDeadline bounds one claim statement on the client.
	StatementDeadline time.Duration
}

// serviceConfigs are the slices of every service.
type serviceConfigs struct {
	keeper    leaseKeeperConfig
	sweeper   sweeperConfig
	control   controlReaderConfig
	gauges    gaugeReaderConfig
	completer completerConfig
	workers   workerPoolConfig
	listener  listenerConfig
	retention retainerConfig
	claimer   claimerConfig
}

// serviceConfigs cuts a validated Config (defaults applied) into the
// services' slices. callTimeout is the longest one call may take.
func (c Config) serviceConfigs(callTimeout time.Duration) serviceConfigs {
	return serviceConfigs{
		keeper: leaseKeeperConfig{Name: c.Name, Version: c.Version, Lease: c.Lease,
			Interval: c.heartbeatInterval(), LiveWithin: c.liveWithin(),
			RateLimit: c.RateLimit, RateBurst: c.RateBurst},
		sweeper: sweeperConfig{Name: c.Name, Interval: c.sweepInterval(), Timeout: c.heartbeatInterval(),
			LiveWithin: c.liveWithin(), MaxAttempts: c.MaxAttempts, MaxAge: c.MaxAge, CallTimeout: callTimeout},
		control: controlReaderConfig{Interval: controlInterval},
		gauges:  gaugeReaderConfig{Interval: gaugeInterval},
		completer: completerConfig{Name: c.Name, AppID: c.AppID, MaxAttempts: c.MaxAttempts, MaxAge: c.MaxAge,
			QueueSize: c.Concurrency, StatementDeadline: c.statementDeadline(), ShutdownTimeout: c.ShutdownTimeout},
		workers:   workerPoolConfig{ShutdownTimeout: c.ShutdownTimeout},
		listener:  listenerConfig{RetryMin: listenRetryMin, RetryMax: listenRetryMax, ConnectTimeout: listenConnectTimeout},
		retention: retainerConfig{RetentionConfig: c.Retention, AppID: c.AppID, SyncTTL: c.syncTTL()},
		claimer: claimerConfig{Name: c.Name, AppID: c.AppID, BatchSize: c.BatchSize, PollInterval: c.PollInterval,
			Lease: c.Lease, SyncTTL: c.syncTTL(), StatementDeadline: c.statementDeadline()},
	}
}

// syncTTL is the skip window of user and conversation PUTs (0 disables
// skipping).
func (c Config) syncTTL() time.Duration {
	if c.UserSyncTTL < 0 {
		return 0
	}
	return c.UserSyncTTL
}

// serviceEnv is what the relay hands every service besides its slice:
// the statements, the metrics, the logger, and two ways back into the
// relay's shared state.
type serviceEnv struct {
	q       queries
	log     *slog.Logger
	metrics *metrics
	// setDB records a database operation's outcome, for readiness and
	// the database errors metric (Relay.setDB).
	setDB func(ok bool, op string, err error)
	// wake wakes the claimer: something may be claimable now.
	wake func()
	// epoch is the origin of the monotonic lease clock, shared by every
	// holder of a lease deadline.
	epoch time.Time
}

// monotonic converts t to nanoseconds on the relay's monotonic clock.
func (e *serviceEnv) monotonic(t time.Time) int64 { return int64(t.Sub(e.epoch)) }
