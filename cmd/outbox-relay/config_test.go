package main

import (
	"strings"
	"testing"
	"time"

	"github.com/sethvargo/go-envconfig"

	"github.com/outbox-relay/outbox-relay/provider/talkjs"
	"github.com/outbox-relay/outbox-relay/relay"
)

func TestUnitFormatDuration(t *testing.T) {
	t.Parallel()
	for d, want := range map[time.Duration]string{
		0:                      "0s",
		100 * time.Millisecond: "100ms",
		time.Second:            "1s",
		90 * time.Second:       "1m30s",
		10 * time.Minute:       "10m",
		90 * time.Minute:       "1h30m",
		24 * time.Hour:         "24h",
		720 * time.Hour:        "720h",
	} {
		if got := formatDuration(d); got != want {
			t.Errorf("formatDuration(%s) = %q, want %q", d, got, want)
		}
	}
}

// The daemon started with only the required variables runs with the relay's
// and the TalkJS client's own defaults; the variables whose 0 means "off"
// reach the relay as its named negative values.
func TestUnitDefaultsAreTheLibraries(t *testing.T) {
	t.Parallel()
	required := map[string]string{"DATABASE_URL": "postgres://localhost/x", "TALKJS_APP_ID": "app", "TALKJS_SECRET_KEY": "sk"}
	var cfg runConfig
	if err := loadConfig(t.Context(), envconfig.MapLookuper(required), &cfg); err != nil {
		t.Fatal(err)
	}
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	rc := cfg.relayConfig(nil)
	for _, c := range []struct {
		name      string
		got, want any
	}{
		{"Concurrency", rc.Concurrency, relay.DefaultConcurrency},
		{"BatchSize", rc.BatchSize, relay.DefaultBatchSize},
		{"PollInterval", rc.PollInterval, relay.DefaultPollInterval},
		{"Lease", rc.Lease, relay.DefaultLease},
		{"MaxAttempts", rc.MaxAttempts, relay.DefaultMaxAttempts},
		{"MaxAge", rc.MaxAge, relay.DefaultMaxAge},
		{"Retry.Base", rc.Retry.Base, relay.DefaultRetryBase},
		{"Retry.Max", rc.Retry.Max, relay.DefaultRetryMax},
		{"UserSyncTTL", rc.UserSyncTTL, relay.DefaultUserSyncTTL},
		{"BreakerThreshold", rc.BreakerThreshold, relay.DefaultBreakerThreshold},
		{"ShutdownTimeout", rc.ShutdownTimeout, relay.DefaultShutdownTimeout},
		{"Retention.Done", rc.Retention.Done, time.Duration(0)},
		{"Retention.Keys", rc.Retention.Keys, relay.DefaultKeyRetention},
		{"Retention.Interval", rc.Retention.Interval, relay.DefaultRetentionInterval},
		{"Retention.BatchSize", rc.Retention.BatchSize, relay.DefaultRetentionBatchSize},
		{"talkjs BaseURL", cfg.talkjsConfig().BaseURL, talkjs.DefaultBaseURL},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want the library's default %v", c.name, c.got, c.want)
		}
	}

	off := map[string]string{"OUTBOX_USER_SYNC_TTL": "0", "OUTBOX_KEY_RETENTION": "0"}
	for k, v := range required {
		off[k] = v
	}
	cfg = runConfig{}
	if err := loadConfig(t.Context(), envconfig.MapLookuper(off), &cfg); err != nil {
		t.Fatal(err)
	}
	rc = cfg.relayConfig(nil)
	if rc.UserSyncTTL != relay.NoUserSyncSkip || rc.Retention.Keys != relay.KeepKeysForever {
		t.Errorf("with both variables 0: UserSyncTTL %s, Retention.Keys %s; want NoUserSyncSkip, KeepKeysForever", rc.UserSyncTTL, rc.Retention.Keys)
	}
}

// The relay's and the TalkJS client's own checks refuse the values, and
// their errors come back under the variables' names, once per variable.
func TestUnitLibraryErrorsByVariable(t *testing.T) {
	t.Parallel()
	required := map[string]string{"DATABASE_URL": "postgres://localhost/x", "TALKJS_APP_ID": "app", "TALKJS_SECRET_KEY": "sk"}
	for _, tc := range []struct {
		variable, value, want string
	}{
		{"OUTBOX_CONCURRENCY", "0", "OUTBOX_CONCURRENCY: must be positive, got 0"},
		{"OUTBOX_LEASE", "500ms", "OUTBOX_LEASE: must be at least 1s, got 500ms"},
		{"OUTBOX_RETRY_MAX", "1ms", "OUTBOX_RETRY_MAX: (1ms) must be at least OUTBOX_RETRY_BASE (1s)"},
		{"OUTBOX_RETENTION_INTERVAL", "0s", "OUTBOX_RETENTION_INTERVAL: must be positive, got 0s"},
		{"OUTBOX_RATE_BURST", "-1", "OUTBOX_RATE_BURST: must not be negative, got -1"},
		{"TALKJS_TIMEOUT", "50ms", "TALKJS_TIMEOUT: must be at least 100ms, got 50ms"},
		{"TALKJS_APP_ID", "  ", "TALKJS_APP_ID: must not be blank"},
		{"TALKJS_BASE_URL", "ftp://x", "TALKJS_BASE_URL: must start with http:// or https://"},
		{"OUTBOX_USER_SYNC_TTL", "-1s", "OUTBOX_USER_SYNC_TTL: must not be negative (0 turns skipping off), got -1s"},
	} {
		env := map[string]string{tc.variable: tc.value}
		for k, v := range required {
			if k != tc.variable {
				env[k] = v
			}
		}
		var cfg runConfig
		if err := loadConfig(t.Context(), envconfig.MapLookuper(env), &cfg); err != nil {
			t.Fatal(err)
		}
		err := cfg.validate()
		if err == nil {
			t.Errorf("%s=%s accepted", tc.variable, tc.value)
			continue
		}
		if got := err.Error(); !strings.Contains(got, tc.want) || strings.Count(got, tc.variable+":") != 1 {
			t.Errorf("%s=%s: error %q, want %q once", tc.variable, tc.value, got, tc.want)
		}
	}
}
