package relay

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/prometheus/client_golang/prometheus"
)

// Config tunes a Relay. The zero value of every field means its default.
type Config struct {
	// Name identifies this relay process in leases, attempts and the
	// relays table. Default: hostname-pid-random, unique per start.
	Name string

	// Version is recorded in the relays table. Default "dev".
	Version string

	// AppID names the TalkJS app the provider delivers to (TALKJS_APP_ID).
	// Records of synchronised users are kept per app, so a relay never
	// skips a user because another app (a staging copy of the database
	// pointed at its own app) received it. Default "".
	AppID string

	// Concurrency is the most intents delivered at once. Default 100.
	Concurrency int

	// BatchSize is the most intents claimed by one statement. Default 100.
	BatchSize int

	// PollInterval bounds how long an idle relay waits before looking for
	// work when no notification arrives (a lost NOTIFY, a backoff that
	// elapsed, a lease that expired). Default 1s.
	PollInterval time.Duration

	// Lease is how long a claimed intent stays reserved without a heartbeat.
	// A crashed relay's intents are taken over after at most Lease plus one
	// sweep (Lease/10, at most 1s). Heartbeats renew every Lease/3. A call
	// ends by the lease's end less a margin of Lease/10; a provider that
	// bounds its own calls (a Timeout method, as talkjs.Client has) must
	// bound them to at most Lease/2, so that its timeout, not the lease,
	// cuts a call that gets no answer. At least 1s. Default 10s.
	Lease time.Duration

	// MaxAttempts is the retry budget in delivery attempts; an intent that
	// fails this many times goes dead. Rate-limited attempts and attempts
	// stopped by a shutdown or an auth failure do not count. Default 25.
	MaxAttempts int

	// MaxAge is the retry budget in time since the intent's first counted
	// failure (or its first after a retry): a failure later than that
	// makes it dead. Time spent waiting behind an earlier intent of its
	// conversation, or while delivery was paused, before it ever failed
	// does not count. Default 24h.
	MaxAge time.Duration

	// Retry is the backoff between failed attempts.
	Retry RetryPolicy

	// UserSyncTTL: a user PUT whose content equals what was synchronised
	// less than this long ago is skipped (and recorded as skipped). Zero
	// uses the default of 1h; NoUserSyncSkip (any negative value) disables
	// skipping.
	UserSyncTTL time.Duration

	// RateLimit is the request rate (per second) the whole TalkJS app may
	// spend, shared by all live relays (each takes RateLimit / live relays,
	// updated every heartbeat). With RateAdaptive it is a ceiling (0 for
	// none) and the rate to start from; without, the fixed limit (0 for no
	// client-side limit). RateBurst is the matching burst, shared the same
	// way; default: one second of the current rate when adaptive, else
	// max(1, RateLimit).
	RateLimit float64
	RateBurst int
	// RateAdaptive finds the rate from the API's answers (see rate.go),
	// when the provider reports them (provider/talkjs.Client does).
	RateAdaptive bool
	// RateStart is the rate of the whole app an adaptive limit starts from
	// when RateLimit is 0 and no live relay publishes a rate: like
	// RateLimit, shared by the live relays (each starts from RateStart /
	// live relays, and rescales as relays come and go). Default
	// DefaultRateStart.
	RateStart float64

	// BreakerThreshold is how many consecutive retryable failures (with no
	// success between) open the circuit breaker, after which only one probe
	// intent is attempted per probe interval until a call succeeds.
	// Default 10.
	BreakerThreshold int

	// Retention tunes the retention service: done intents, retired
	// idempotency keys, stale user syncs and the rows of relays long
	// silent. Done intents are kept unless Retention.Done is set.
	Retention RetentionConfig

	// ShutdownTimeout bounds how long Stop waits for in-flight deliveries
	// before cancelling them (they go back to pending). Default 10s.
	ShutdownTimeout time.Duration

	// Logger receives the relay's logs. Default: discard.
	Logger *slog.Logger

	// Registerer receives the relay's Prometheus metrics. Default: none.
	Registerer prometheus.Registerer

	// Clock returns the current time; tests may replace it. Default time.Now.
	Clock func() time.Time
}

// RetryPolicy is exponential backoff with jitter: the n-th retry waits a
// random duration in [d/2, d] where d = min(Max, Base * 2^(n-1)).
type RetryPolicy struct {
	// Base is the first retry's upper bound. Default 1s.
	Base time.Duration
	// Max caps the backoff. Default 10m.
	Max time.Duration
}

// NoUserSyncSkip, as Config.UserSyncTTL, turns the skipping of unchanged
// PUTs off (OUTBOX_USER_SYNC_TTL=0). A zero field of Config always means
// its default; "off" is a negative value.
const NoUserSyncSkip time.Duration = -1

// KeepKeysForever, as RetentionConfig.Keys, keeps the idempotency keys of
// deleted intents refused forever (OUTBOX_KEY_RETENTION=0).
const KeepKeysForever time.Duration = -1

// Defaults.
const (
	DefaultConcurrency      = 100
	DefaultBatchSize        = 100
	DefaultPollInterval     = time.Second
	DefaultLease            = 10 * time.Second
	DefaultMaxAttempts      = 25
	DefaultMaxAge           = 24 * time.Hour
	DefaultRetryBase        = time.Second
	DefaultRetryMax         = 10 * time.Minute
	DefaultUserSyncTTL      = time.Hour
	DefaultBreakerThreshold = 10
	DefaultShutdownTimeout  = 10 * time.Second
	DefaultRateStart        = 20.0
)

// DefaultConfig returns a Config with every default filled in, but for
// Name (New draws one per relay), Logger and Clock. Build a Config from
// it when a zero is meant as given, not as "the default" (a CLI whose
// variables are set to 0), and check it with Validate.
func DefaultConfig() Config {
	c := Config{}.withDefaults()
	c.Name, c.Logger, c.Clock = "", nil, nil
	return c
}

// withDefaults returns c with every zero field set to its default.
func (c Config) withDefaults() Config {
	if c.Name == "" {
		host, _ := os.Hostname()
		c.Name = fmt.Sprintf("%s-%d-%s", host, os.Getpid(), randomSuffix())
	}
	c.Version = cmp.Or(c.Version, "dev")
	c.Concurrency = cmp.Or(c.Concurrency, DefaultConcurrency)
	c.BatchSize = cmp.Or(c.BatchSize, DefaultBatchSize)
	c.PollInterval = cmp.Or(c.PollInterval, DefaultPollInterval)
	c.Lease = cmp.Or(c.Lease, DefaultLease)
	c.MaxAttempts = cmp.Or(c.MaxAttempts, DefaultMaxAttempts)
	c.MaxAge = cmp.Or(c.MaxAge, DefaultMaxAge)
	c.Retry.Base = cmp.Or(c.Retry.Base, DefaultRetryBase)
	c.Retry.Max = cmp.Or(c.Retry.Max, DefaultRetryMax)
	c.UserSyncTTL = cmp.Or(c.UserSyncTTL, DefaultUserSyncTTL)
	if c.RateBurst == 0 && c.RateLimit > 0 && !c.RateAdaptive {
		c.RateBurst = DefaultRateBurst(c.RateLimit)
	}
	c.RateStart = cmp.Or(c.RateStart, DefaultRateStart)
	c.BreakerThreshold = cmp.Or(c.BreakerThreshold, DefaultBreakerThreshold)
	c.Retention = c.Retention.withDefaults()
	c.ShutdownTimeout = cmp.Or(c.ShutdownTimeout, DefaultShutdownTimeout)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	return c
}

// DefaultRateBurst is a fixed rate limit's burst when RateBurst is 0:
// one second of the rate, rounded up, at least 1 (provider/talkjs's too).
func DefaultRateBurst(limit float64) int {
	if limit <= 0 || math.IsInf(limit, 0) || math.IsNaN(limit) {
		return 1
	}
	return int(max(1, math.Ceil(limit)))
}

// ConfigError is an invalid field of a Config. Validate and New return
// them joined, one per invalid field.
type ConfigError struct {
	// Field is the field's path in Config: "Lease", "Retention.Interval".
	Field string
	// Reason says what is wrong, with the value refused: "must be at
	// least 1s, got 10ms". It may name the fields in Related.
	Reason string
	// Related are the other fields the rule compares Field with.
	Related []string
}

func (e *ConfigError) Error() string { return e.Field + " " + e.Reason }

// Validate reports every invalid field of c as it is given: a zero field
// that has no meaning of its own is refused (New gives such fields their
// default first). The error joins one *ConfigError per invalid field.
func (c Config) Validate() error { return c.validate() }

// validate reports every invalid field of c.
func (c Config) validate() error {
	var errs []error
	check := func(ok bool, field, format string, args ...any) {
		if !ok {
			errs = append(errs, &ConfigError{Field: field, Reason: fmt.Sprintf(format, args...)})
		}
	}
	check(c.Concurrency > 0, "Concurrency", "must be positive, got %d", c.Concurrency)
	check(c.BatchSize > 0, "BatchSize", "must be positive, got %d", c.BatchSize)
	check(c.PollInterval > 0, "PollInterval", "must be positive, got %s", c.PollInterval)
	check(c.Lease >= MinLease, "Lease", "must be at least %s, got %s", MinLease, c.Lease)
	check(c.MaxAttempts > 0, "MaxAttempts", "must be positive, got %d", c.MaxAttempts)
	check(c.MaxAge > 0, "MaxAge", "must be positive, got %s", c.MaxAge)
	check(c.Retry.Base > 0, "Retry.Base", "must be positive, got %s", c.Retry.Base)
	if c.Retry.Max < c.Retry.Base {
		errs = append(errs, &ConfigError{Field: "Retry.Max", Related: []string{"Retry.Base"},
			Reason: fmt.Sprintf("(%s) must be at least Retry.Base (%s)", c.Retry.Max, c.Retry.Base)})
	}
	check(c.UserSyncTTL != 0, "UserSyncTTL", "must not be 0: use NoUserSyncSkip to turn skipping off")
	check(c.RateLimit >= 0 && !math.IsInf(c.RateLimit, 0), "RateLimit", "must be a finite number >= 0, got %g", c.RateLimit)
	check(c.RateBurst >= 0, "RateBurst", "must not be negative, got %d", c.RateBurst)
	check(c.RateStart > 0 && !math.IsInf(c.RateStart, 0), "RateStart", "must be a positive number, got %g", c.RateStart)
	check(c.BreakerThreshold > 0, "BreakerThreshold", "must be positive, got %d", c.BreakerThreshold)
	errs = append(errs, c.Retention.validate()...)
	check(c.ShutdownTimeout > 0, "ShutdownTimeout", "must be positive, got %s", c.ShutdownTimeout)
	check(len(c.Name) <= 200, "Name", "must be at most 200 bytes")
	if len(errs) > 0 {
		return fmt.Errorf("relay config: %w", errors.Join(errs...))
	}
	return nil
}

// MinLease is the shortest Lease accepted.
const MinLease = time.Second

// MaxCallTimeout is the longest a provider's own per-call timeout may be
// under a lease: half of it. A call starts with at least 2/3 of the lease
// left (renewals come every third) less the margin (a tenth), so such a
// timeout fires inside the lease, with room for a late renewal.
func MaxCallTimeout(lease time.Duration) time.Duration { return lease / 2 }

// leaseMargin is kept between the end of any call and the end of its lease
// by the local clock: the request then reaches the API before any other
// relay may take the intent over, with room for clock rate differences.
// It scales with the lease, so the shortest lease still leaves calls most
// of their time.
func leaseMargin(lease time.Duration) time.Duration { return lease / 10 }

// callBudget is how long a call starting with leaseLeft of its lease may
// take: up to the lease's end less the margin. ok is false when nothing
// is left: the lease may pass to another relay before any answer.
func callBudget(leaseLeft, lease time.Duration) (budget time.Duration, ok bool) {
	budget = leaseLeft - leaseMargin(lease)
	return budget, budget > 0
}

// checkCallTimeout refuses a provider timeout that could outlast the
// lease it is used under.
func checkCallTimeout(timeout, lease time.Duration) error {
	if timeout <= 0 || timeout > MaxCallTimeout(lease) {
		return fmt.Errorf("relay config: the provider's call timeout (%s) must be positive and at most half the Lease (%s), so that a call with no answer ends inside its lease: lower the timeout to %s or raise the Lease to %s",
			timeout, lease, MaxCallTimeout(lease), max(2*timeout, MinLease))
	}
	return nil
}

// heartbeatInterval is how often leases are renewed.
func (c Config) heartbeatInterval() time.Duration { return c.Lease / 3 }

// sweepInterval is how often expired leases are looked for.
func (c Config) sweepInterval() time.Duration { return min(c.Lease/10, time.Second) }

// statementTimeout bounds each statement of the relay on the server (the
// statement_timeout of its sessions, see ConfigurePool): a quarter of the
// lease, at least 250ms, at most 5s. A statement stuck behind a lock held
// by another session then fails well before the lease runs out, instead of
// holding the completer, the renewals or the claim.
func (c Config) statementTimeout() time.Duration {
	return min(max(c.Lease/4, 250*time.Millisecond), 5*time.Second)
}

// lockTimeout bounds a wait for a lock (the lock_timeout of the relay's
// sessions): half the statement timeout, at most 1s. The relay's own
// statements hold row locks for milliseconds; a longer wait is a lock held
// by someone else.
func (c Config) lockTimeout() time.Duration {
	return min(c.statementTimeout()/2, time.Second)
}

// statementDeadline bounds a statement on the client: the server's timeout
// plus a second, for a server that does not answer at all.
func (c Config) statementDeadline() time.Duration {
	return c.statementTimeout() + time.Second
}

// ConfigurePool sets the statement and lock timeouts the relay configured
// by cfg needs on the sessions of a pool made from pc (a quarter of the
// lease for a statement, at most 5s; at most 1s for a lock wait). Give the
// relay a pool of its own made this way: a statement stuck behind a row
// lock that another session holds then fails in time and the relay sets
// the result it carries aside, instead of waiting as long as the lock is
// held. Start logs a warning when the pool's sessions have no such bound.
func ConfigurePool(pc *pgxpool.Config, cfg Config) {
	cfg = cfg.withDefaults()
	if pc.ConnConfig.RuntimeParams == nil {
		pc.ConnConfig.RuntimeParams = map[string]string{}
	}
	pc.ConnConfig.RuntimeParams["statement_timeout"] = strconv.FormatInt(cfg.statementTimeout().Milliseconds(), 10)
	pc.ConnConfig.RuntimeParams["lock_timeout"] = strconv.FormatInt(cfg.lockTimeout().Milliseconds(), 10)
}
