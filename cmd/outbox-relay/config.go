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
// README.md; keep the two in step. A relay or talkjs tag names the field of
// relay.Config or talkjs.Config the variable sets: those packages validate
// it, and their errors are reported under the variable's name.
type runConfig struct {
	DatabaseURL string `env:"DATABASE_URL, required"`

	TalkJSAppID      string      `env:"TALKJS_APP_ID, required" talkjs:"AppID"`
	TalkJSSecretKey  secret      `env:"TALKJS_SECRET_KEY, required" talkjs:"SecretKey"`
	TalkJSBaseURL    string      `env:"TALKJS_BASE_URL" talkjs:"BaseURL"`
	TalkJSLegacyAuth bool        `env:"TALKJS_LEGACY_AUTH" talkjs:"LegacyAuth"`
	TalkJSTimeout    callTimeout `env:"TALKJS_TIMEOUT" talkjs:"Timeout"` // unset: half of OUTBOX_LEASE

	Concurrency        int           `env:"OUTBOX_CONCURRENCY" relay:"Concurrency" talkjs:"MaxConns"`
	BatchSize          int           `env:"OUTBOX_BATCH_SIZE" relay:"BatchSize"`
	PollInterval       time.Duration `env:"OUTBOX_POLL_INTERVAL" relay:"PollInterval"`
	Lease              time.Duration `env:"OUTBOX_LEASE" relay:"Lease"`
	MaxAttempts        int           `env:"OUTBOX_MAX_ATTEMPTS" relay:"MaxAttempts"`
	MaxAge             time.Duration `env:"OUTBOX_MAX_AGE" relay:"MaxAge"`
	RetryBase          time.Duration `env:"OUTBOX_RETRY_BASE" relay:"Retry.Base"`
	RetryMax           time.Duration `env:"OUTBOX_RETRY_MAX" relay:"Retry.Max"`
	UserSyncTTL        time.Duration `env:"OUTBOX_USER_SYNC_TTL" relay:"UserSyncTTL"`
	RateLimit          float64       `env:"OUTBOX_RATE_LIMIT" relay:"RateLimit" talkjs:"RateLimit"`
	RateBurst          int           `env:"OUTBOX_RATE_BURST" relay:"RateBurst" talkjs:"RateBurst"`
	RateAdaptive       bool          `env:"OUTBOX_RATE_ADAPTIVE" relay:"RateAdaptive"`
	BreakerThreshold   int           `env:"OUTBOX_BREAKER_THRESHOLD" relay:"BreakerThreshold"`
	ShutdownTimeout    time.Duration `env:"OUTBOX_SHUTDOWN_TIMEOUT" relay:"ShutdownTimeout"`
	RetentionDone      time.Duration `env:"OUTBOX_RETENTION" relay:"Retention.Done"`
	RetentionKeys      time.Duration `env:"OUTBOX_KEY_RETENTION" relay:"Retention.Keys"`
	RetentionInterval  time.Duration `env:"OUTBOX_RETENTION_INTERVAL" relay:"Retention.Interval"`
	RetentionBatchSize int           `env:"OUTBOX_RETENTION_BATCH_SIZE" relay:"Retention.BatchSize"`
	RelayName          string        `env:"OUTBOX_RELAY_NAME" relay:"Name"`
	Migrate            bool          `env:"OUTBOX_MIGRATE"`
	HTTPAddr           string        `env:"OUTBOX_HTTP_ADDR"`
	LogLevel           string        `env:"OUTBOX_LOG_LEVEL"`
	LogFormat          string        `env:"OUTBOX_LOG_FORMAT"`
}

// envDefaults is the default of every variable that has a fixed one, as
// its text: taken from the package that owns the setting (relay, talkjs),
// so the daemon, the libraries and the README (kept equal by a test) agree.
// loadConfig reads a variable from here when the environment lacks it.
func envDefaults() map[string]string {
	itoa := strconv.Itoa
	return map[string]string{
		"OUTBOX_RATE_LIMIT":           "0", // no client-side limit, or no ceiling when adaptive (relay.Config.RateLimit)
		"OUTBOX_RATE_BURST":           "0", // derived from the rate (relay.Config.RateBurst)
		"OUTBOX_RATE_ADAPTIVE":        "true",
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
// The daemon checks only what is its own (the database URL, the logs);
// the relay and the TalkJS client check their settings themselves, with
// their own minimums, and their errors are named by variable here.
func (c *runConfig) validate() error {
	var errs []error
	bad := func(name, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{name}, args...)...))
	}
	if _, err := pgx.ParseConfig(c.DatabaseURL); err != nil {
		bad("DATABASE_URL", "%v", err)
	}
	// 0 turns these off; the relay's negative "off" values are not the
	// variables' to take.
	if c.UserSyncTTL < 0 {
		bad("OUTBOX_USER_SYNC_TTL", "must not be negative (0 turns skipping off), got %s", c.UserSyncTTL)
	}
	if c.RetentionKeys < 0 {
		bad("OUTBOX_KEY_RETENTION", "must not be negative (0 keeps keys forever), got %s", c.RetentionKeys)
	}
	errs = append(errs, byVariable(c.relayConfig(nil).Validate(), c.talkjsConfig().Validate())...)
	// A call must end inside the lease it is made under (renewed every
	// third of it, less a tenth kept as margin), so the client's timeout
	// fires first on an API that does not answer.
	if t := c.talkJSTimeout(); c.Lease >= relay.MinLease && t > relay.MaxCallTimeout(c.Lease) {
		errs = append(errs, fmt.Errorf("TALKJS_TIMEOUT (%s) must be at most half of OUTBOX_LEASE (%s): a call must end inside its lease; "+
			"lower TALKJS_TIMEOUT to %s, raise OUTBOX_LEASE to %s, or leave TALKJS_TIMEOUT unset (half the lease)",
			t, c.Lease, relay.MaxCallTimeout(c.Lease), 2*t))
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

// byVariable rewrites the relay's and the TalkJS client's configuration
// errors under the names of the variables that set the fields ("Lease must
// be at least 1s" becomes "OUTBOX_LEASE: must be at least 1s"), one per
// variable (OUTBOX_CONCURRENCY sets two fields; the first error wins).
func byVariable(relayErr, talkjsErr error) []error {
	vars := fieldVariables()
	var out []error
	seen := map[string]bool{}
	add := func(variable, reason string, err error) {
		switch {
		case variable == "":
			out = append(out, err) // a field no variable sets: reported as the package names it
		case !seen[variable]:
			seen[variable] = true
			out = append(out, fmt.Errorf("%s: %s", variable, reason))
		}
	}
	for _, err := range leafErrors(relayErr) {
		var ce *relay.ConfigError
		if !errors.As(err, &ce) {
			out = append(out, err)
			continue
		}
		reason := ce.Reason
		for _, f := range ce.Related {
			if v := vars["relay:"+f]; v != "" {
				reason = strings.ReplaceAll(reason, f, v)
			}
		}
		add(vars["relay:"+ce.Field], reason, err)
	}
	for _, err := range leafErrors(talkjsErr) {
		var ce *talkjs.ConfigError
		if !errors.As(err, &ce) {
			out = append(out, err)
			continue
		}
		add(vars["talkjs:"+ce.Field], ce.Reason, err)
	}
	return out
}

// leafErrors flattens wrapped and joined errors into the errors joined.
func leafErrors(err error) []error {
	switch e := err.(type) { //nolint:errorlint // walking the tree of wrapped errors itself
	case nil:
		return nil
	case interface{ Unwrap() []error }:
		var out []error
		for _, inner := range e.Unwrap() {
			out = append(out, leafErrors(inner)...)
		}
		return out
	case interface{ Unwrap() error }:
		if inner := e.Unwrap(); inner != nil {
			if _, ok := inner.(interface{ Unwrap() []error }); ok {
				return leafErrors(inner)
			}
		}
	}
	return []error{err}
}

// fieldVariables maps "relay:Field" and "talkjs:Field" to the variable
// that sets it, from runConfig's tags.
func fieldVariables() map[string]string {
	out := map[string]string{}
	t := reflect.TypeFor[runConfig]()
	for i := range t.NumField() {
		f := t.Field(i)
		variable, _, _ := strings.Cut(f.Tag.Get("env"), ",")
		for _, pkg := range []string{"relay", "talkjs"} {
			if field := f.Tag.Get(pkg); field != "" {
				out[pkg+":"+field] = variable
			}
		}
	}
	return out
}

// talkjsConfig is the TalkJS client's configuration, every field given:
// talkjs.Config.Validate checks it as it is.
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
		RateBurst: c.RateBurst,
	}
}

// relayConfig is the relay's configuration: the relay's defaults with the
// variables' values over them, so a variable set to 0 reaches the relay
// as 0 (refused by relay.Config.Validate where 0 means nothing), not as
// "the default".
func (c *runConfig) relayConfig(logger *slog.Logger) relay.Config {
	rc := relay.DefaultConfig()
	rc.Name, rc.Version, rc.AppID = c.RelayName, readBuildInfo().Version, c.TalkJSAppID
	rc.Concurrency, rc.BatchSize, rc.PollInterval = c.Concurrency, c.BatchSize, c.PollInterval
	rc.Lease, rc.MaxAttempts, rc.MaxAge = c.Lease, c.MaxAttempts, c.MaxAge
	rc.Retry = relay.RetryPolicy{Base: c.RetryBase, Max: c.RetryMax}
	rc.UserSyncTTL = userSyncTTL(c.UserSyncTTL)
	rc.RateLimit, rc.RateBurst, rc.RateAdaptive = c.RateLimit, c.RateBurst, c.RateAdaptive
	rc.BreakerThreshold, rc.ShutdownTimeout = c.BreakerThreshold, c.ShutdownTimeout
	rc.Retention.Done, rc.Retention.Keys = c.RetentionDone, keyRetention(c.RetentionKeys)
	rc.Retention.Interval, rc.Retention.BatchSize = c.RetentionInterval, c.RetentionBatchSize
	rc.Logger = logger
	return rc
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
