package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/sethvargo/go-envconfig"

	"github.com/outbox-relay/outbox-relay/provider/talkjs"
	"github.com/outbox-relay/outbox-relay/relay"
)

// dbConfig is all that migrate, status and retry need.
type dbConfig struct {
	DatabaseURL string `env:"DATABASE_URL, required"`
}

// runConfig is the daemon's configuration. Every variable is documented in
// README.md; keep the two in step.
type runConfig struct {
	DatabaseURL string `env:"DATABASE_URL, required"`

	TalkJSAppID      string      `env:"TALKJS_APP_ID, required"`
	TalkJSSecretKey  secret      `env:"TALKJS_SECRET_KEY, required"`
	TalkJSBaseURL    string      `env:"TALKJS_BASE_URL"`
	TalkJSLegacyAuth bool        `env:"TALKJS_LEGACY_AUTH"`
	TalkJSTimeout    callTimeout `env:"TALKJS_TIMEOUT"` // unset: half of OUTBOX_LEASE

	Concurrency      int           `env:"OUTBOX_CONCURRENCY"`
	BatchSize        int           `env:"OUTBOX_BATCH_SIZE"`
	PollInterval     time.Duration `env:"OUTBOX_POLL_INTERVAL"`
	Lease            time.Duration `env:"OUTBOX_LEASE"`
	MaxAttempts      int           `env:"OUTBOX_MAX_ATTEMPTS"`
	MaxAge           time.Duration `env:"OUTBOX_MAX_AGE"`
	RetryBase        time.Duration `env:"OUTBOX_RETRY_BASE"`
	RetryMax         time.Duration `env:"OUTBOX_RETRY_MAX"`
	UserSyncTTL      time.Duration `env:"OUTBOX_USER_SYNC_TTL"`
	RateLimit        float64       `env:"OUTBOX_RATE_LIMIT, default=0"`
	RateBurst        int           `env:"OUTBOX_RATE_BURST, default=0"`
	RateAdaptive     bool          `env:"OUTBOX_RATE_ADAPTIVE, default=true"`
	BreakerThreshold int           `env:"OUTBOX_BREAKER_THRESHOLD"`
	ShutdownTimeout  time.Duration `env:"OUTBOX_SHUTDOWN_TIMEOUT"`
	Retention        time.Duration `env:"OUTBOX_RETENTION"`
	KeyRetention     time.Duration `env:"OUTBOX_KEY_RETENTION"`
	RetentionEvery   time.Duration `env:"OUTBOX_RETENTION_INTERVAL"`
	RetentionBatch   int           `env:"OUTBOX_RETENTION_BATCH_SIZE"`
	RelayName        string        `env:"OUTBOX_RELAY_NAME"`
	Migrate          bool          `env:"OUTBOX_MIGRATE"`
	HTTPAddr         string        `env:"OUTBOX_HTTP_ADDR"`
	LogLevel         string        `env:"OUTBOX_LOG_LEVEL"`
	LogFormat        string        `env:"OUTBOX_LOG_FORMAT"`
}

// envDefaults is the default of every variable that has a fixed one, as
// its text: taken from the package that owns the setting (relay, talkjs),
// so the daemon, the libraries and the README (kept equal by a test) agree.
// loadConfig reads a variable from here when the environment lacks it.
// (The rate limit's variables, OUTBOX_RATE_*, still carry theirs in their tags.)
func envDefaults() map[string]string {
	itoa := strconv.Itoa
	return map[string]string{
		"TALKJS_BASE_URL":             talkjs.DefaultBaseURL,
		"TALKJS_LEGACY_AUTH":          "false",
		"OUTBOX_CONCURRENCY":          itoa(relay.DefaultConcurrency),
		"OUTBOX_BATCH_SIZE":           itoa(relay.DefaultBatchSize),
		"OUTBOX_POLL_INTERVAL":        formatDuration(relay.DefaultPollInterval),
		"OUTBOX_LEASE":                formatDuration(relay.DefaultLease),
		"OUTBOX_MAX_ATTEMPTS":         itoa(relay.DefaultMaxAttempts),
		"OUTBOX_MAX_AGE":              formatDuration(relay.DefaultMaxAge),
		"OUTBOX_RETRY_BASE":           formatDuration(relay.DefaultRetryBase),
		"OUTBOX_RETRY_MAX":            formatDuration(relay.DefaultRetryMax),
		"OUTBOX_USER_SYNC_TTL":        formatDuration(relay.DefaultUserSyncTTL),
		"OUTBOX_BREAKER_THRESHOLD":    itoa(relay.DefaultBreakerThreshold),
		"OUTBOX_SHUTDOWN_TIMEOUT":     formatDuration(relay.DefaultShutdownTimeout),
		"OUTBOX_RETENTION":            "0", // done intents are kept (relay.RetentionConfig.Done)
		"OUTBOX_KEY_RETENTION":        formatDuration(relay.DefaultKeyRetention),
		"OUTBOX_RETENTION_INTERVAL":   formatDuration(relay.DefaultRetentionInterval),
		"OUTBOX_RETENTION_BATCH_SIZE": itoa(relay.DefaultRetentionBatchSize),
		"OUTBOX_MIGRATE":              "true",
		"OUTBOX_HTTP_ADDR":            "127.0.0.1:0",
		"OUTBOX_LOG_LEVEL":            "info",
		"OUTBOX_LOG_FORMAT":           "text",
	}
}

// formatDuration writes d as an operator would ("24h", "10m", "1s"), not
// as time.Duration.String does ("24h0m0s").
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// secret is a string that never prints: fmt, %v, %+v, slog and errors all
// see a placeholder.
type secret string

func (secret) String() string                 { return "[redacted]" }
func (secret) GoString() string               { return "[redacted]" }
func (secret) LogValue() slog.Value           { return slog.StringValue("[redacted]") }
func (s secret) MarshalText() ([]byte, error) { return []byte("[redacted]"), nil }

// callTimeout is TALKJS_TIMEOUT, whose default depends on OUTBOX_LEASE:
// set tells an explicit value (even a wrong one) from none.
type callTimeout struct {
	d   time.Duration
	set bool
}

// UnmarshalText parses a Go duration ("5s", "750ms").
func (o *callTimeout) UnmarshalText(b []byte) error {
	d, err := time.ParseDuration(string(b))
	if err != nil {
		// envconfig does not name the variable of a failed UnmarshalText.
		return fmt.Errorf("TALKJS_TIMEOUT: %w", err)
	}
	o.d, o.set = d, true
	return nil
}

// minTalkJSTimeout is the shortest TALKJS_TIMEOUT accepted: below it no
// call to the real API could be expected to answer.
const minTalkJSTimeout = 100 * time.Millisecond

// talkJSTimeout is TALKJS_TIMEOUT, or half of OUTBOX_LEASE when unset.
func (c *runConfig) talkJSTimeout() time.Duration {
	if c.TalkJSTimeout.set {
		return c.TalkJSTimeout.d
	}
	return relay.MaxCallTimeout(c.Lease)
}

// UnmarshalText lets envconfig fill it without ever echoing the value.
func (s *secret) UnmarshalText(b []byte) error {
	*s = secret(b)
	return nil
}

func loadConfig(ctx context.Context, lookup envconfig.Lookuper, cfg any) error {
	lookup = envconfig.MultiLookuper(lookup, envconfig.MapLookuper(envDefaults()))
	if err := envconfig.ProcessWith(ctx, &envconfig.Config{Target: cfg, Lookuper: lookup}); err != nil {
		return fmt.Errorf("configuration: %w", nameVariable(cfg, err))
	}
	return nil
}

// nameVariable rewrites envconfig's "Field: problem" into "VARIABLE:
// problem", since operators know the variables, not our field names.
func nameVariable(cfg any, err error) error {
	msg := err.Error()
	t := reflect.TypeOf(cfg).Elem()
	for i := range t.NumField() {
		f := t.Field(i)
		variable, _, _ := strings.Cut(f.Tag.Get("env"), ",")
		if rest, ok := strings.CutPrefix(msg, f.Name+": "); ok && variable != "" {
			return fmt.Errorf("%s: %s", variable, rest)
		}
	}
	return err
}

// checkDatabaseURL reports an unusable DATABASE_URL under its name (pgx
// redacts the password in its message).
func checkDatabaseURL(url string) error {
	if _, err := pgx.ParseConfig(url); err != nil {
		return fmt.Errorf("configuration: DATABASE_URL: %w", err)
	}
	return nil
}

// validate checks what envconfig cannot, naming the variable at fault.
func (c *runConfig) validate() error {
	var errs []error
	bad := func(name, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{name}, args...)...))
	}
	if _, err := pgx.ParseConfig(c.DatabaseURL); err != nil {
		bad("DATABASE_URL", "%v", err)
	}
	if strings.TrimSpace(c.TalkJSAppID) == "" {
		bad("TALKJS_APP_ID", "must not be empty")
	}
	if strings.TrimSpace(string(c.TalkJSSecretKey)) == "" {
		bad("TALKJS_SECRET_KEY", "must not be empty")
	}
	if !strings.HasPrefix(c.TalkJSBaseURL, "http://") && !strings.HasPrefix(c.TalkJSBaseURL, "https://") {
		bad("TALKJS_BASE_URL", "must start with http:// or https://, got %q", c.TalkJSBaseURL)
	}
	if t := c.talkJSTimeout(); c.TalkJSTimeout.set && t < minTalkJSTimeout {
		bad("TALKJS_TIMEOUT", "must be at least %s, got %s", minTalkJSTimeout, t)
	}
	positive := map[string]int{"OUTBOX_CONCURRENCY": c.Concurrency, "OUTBOX_BATCH_SIZE": c.BatchSize,
		"OUTBOX_MAX_ATTEMPTS": c.MaxAttempts, "OUTBOX_BREAKER_THRESHOLD": c.BreakerThreshold}
	for _, name := range []string{"OUTBOX_CONCURRENCY", "OUTBOX_BATCH_SIZE", "OUTBOX_MAX_ATTEMPTS", "OUTBOX_BREAKER_THRESHOLD"} {
		if positive[name] <= 0 {
			bad(name, "must be positive, got %d", positive[name])
		}
	}
	durations := map[string]time.Duration{"OUTBOX_POLL_INTERVAL": c.PollInterval, "OUTBOX_LEASE": c.Lease,
		"OUTBOX_MAX_AGE": c.MaxAge, "OUTBOX_RETRY_BASE": c.RetryBase, "OUTBOX_RETRY_MAX": c.RetryMax,
		"OUTBOX_SHUTDOWN_TIMEOUT": c.ShutdownTimeout}
	for _, name := range []string{"OUTBOX_POLL_INTERVAL", "OUTBOX_LEASE", "OUTBOX_MAX_AGE", "OUTBOX_RETRY_BASE", "OUTBOX_RETRY_MAX", "OUTBOX_SHUTDOWN_TIMEOUT"} {
		if durations[name] <= 0 {
			bad(name, "must be positive, got %s", durations[name])
		}
	}
	if c.Lease > 0 && c.Lease < relay.MinLease {
		bad("OUTBOX_LEASE", "must be at least %s, got %s", relay.MinLease, c.Lease)
	}
	// A call must end inside the lease it is made under (renewed every
	// third of it, less a tenth kept as margin), so the client's timeout
	// fires first on an API that does not answer.
	if t := c.talkJSTimeout(); c.Lease >= relay.MinLease && t > relay.MaxCallTimeout(c.Lease) {
		errs = append(errs, fmt.Errorf("TALKJS_TIMEOUT (%s) must be at most half of OUTBOX_LEASE (%s): a call must end inside its lease; "+
			"lower TALKJS_TIMEOUT to %s, raise OUTBOX_LEASE to %s, or leave TALKJS_TIMEOUT unset (half the lease)",
			t, c.Lease, relay.MaxCallTimeout(c.Lease), 2*t))
	}
	if c.RetryMax < c.RetryBase {
		bad("OUTBOX_RETRY_MAX", "(%s) must be at least OUTBOX_RETRY_BASE (%s)", c.RetryMax, c.RetryBase)
	}
	if c.Retention < 0 {
		bad("OUTBOX_RETENTION", "must not be negative, got %s", c.Retention)
	}
	if c.KeyRetention < 0 {
		bad("OUTBOX_KEY_RETENTION", "must not be negative (0 keeps keys forever), got %s", c.KeyRetention)
	}
	if c.RetentionEvery <= 0 {
		bad("OUTBOX_RETENTION_INTERVAL", "must be positive, got %s", c.RetentionEvery)
	}
	if c.RetentionBatch <= 0 {
		bad("OUTBOX_RETENTION_BATCH_SIZE", "must be positive, got %d", c.RetentionBatch)
	}
	if c.RateLimit < 0 {
		bad("OUTBOX_RATE_LIMIT", "must not be negative, got %g", c.RateLimit)
	}
	if c.RateBurst < 0 {
		bad("OUTBOX_RATE_BURST", "must not be negative, got %d", c.RateBurst)
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		bad("OUTBOX_LOG_LEVEL", "%v", err)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		bad("OUTBOX_LOG_FORMAT", "must be text or json, got %q", c.LogFormat)
	}
	if len(errs) > 0 {
		return fmt.Errorf("configuration: %w", errors.Join(errs...))
	}
	return nil
}

func (c *runConfig) talkjsConfig() talkjs.Config {
	return talkjs.Config{
		AppID:      c.TalkJSAppID,
		SecretKey:  string(c.TalkJSSecretKey),
		BaseURL:    c.TalkJSBaseURL,
		LegacyAuth: c.TalkJSLegacyAuth,
		Timeout:    c.talkJSTimeout(),
		MaxConns:   c.Concurrency * 2,
		// The relay divides this among live relays at its first heartbeat.
		RateLimit: c.RateLimit,
		Burst:     c.RateBurst,
	}
}

func (c *runConfig) relayConfig(logger *slog.Logger) relay.Config {
	return relay.Config{
		Name:             c.RelayName,
		Version:          readBuildInfo().Version,
		AppID:            c.TalkJSAppID,
		Concurrency:      c.Concurrency,
		BatchSize:        c.BatchSize,
		PollInterval:     c.PollInterval,
		Lease:            c.Lease,
		MaxAttempts:      c.MaxAttempts,
		MaxAge:           c.MaxAge,
		Retry:            relay.RetryPolicy{Base: c.RetryBase, Max: c.RetryMax},
		UserSyncTTL:      userSyncTTL(c.UserSyncTTL),
		RateLimit:        c.RateLimit,
		RateBurst:        c.RateBurst,
		RateAdaptive:     c.RateAdaptive,
		BreakerThreshold: c.BreakerThreshold,
		ShutdownTimeout:  c.ShutdownTimeout,
		Retention: relay.RetentionConfig{
			Done:      c.Retention,
			Keys:      keyRetention(c.KeyRetention),
			Interval:  c.RetentionEvery,
			BatchSize: c.RetentionBatch,
		},
		Logger: logger,
	}
}

// userSyncTTL maps OUTBOX_USER_SYNC_TTL=0 ("never skip") to the relay's
// NoUserSyncSkip: a zero relay.Config field means its default.
func userSyncTTL(d time.Duration) time.Duration {
	if d == 0 {
		return relay.NoUserSyncSkip
	}
	return d
}

// keyRetention maps OUTBOX_KEY_RETENTION=0 ("keep forever") to the relay's
// KeepKeysForever.
func keyRetention(d time.Duration) time.Duration {
	if d == 0 {
		return relay.KeepKeysForever
	}
	return d
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("must be debug, info, warn or error, got %q", s)
	}
	return l, nil
}
