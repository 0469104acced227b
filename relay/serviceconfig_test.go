package relay

import (
	"errors"
	"slices"
	"testing"
	"time"
)

// TestUnitServiceConfigs checks that each service's slice is cut from the
// defaulted Config as the services' documentation says.
func TestUnitServiceConfigs(t *testing.T) {
	t.Parallel()
	cfg := Config{Name: "r1", Lease: 6 * time.Second, UserSyncTTL: NoUserSyncSkip, RateLimit: 30,
		Retention: RetentionConfig{Done: time.Hour}}.withDefaults()
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	sc := cfg.serviceConfigs(3 * time.Second)
	for _, tc := range []struct {
		what      string
		got, want any
	}{
		{"keeper", sc.keeper, leaseKeeperConfig{Name: "r1", Version: "dev", Lease: 6 * time.Second,
			Interval: 2 * time.Second, LiveWithin: 6 * time.Second, RateLimit: 30, RateBurst: 30}},
		{"sweeper", sc.sweeper, sweeperConfig{Name: "r1", Interval: 600 * time.Millisecond, Timeout: 2 * time.Second,
			LiveWithin: 6 * time.Second, MaxAttempts: DefaultMaxAttempts, MaxAge: DefaultMaxAge, CallTimeout: 3 * time.Second}},
		{"control", sc.control, controlReaderConfig{Interval: time.Second}},
		{"gauges", sc.gauges, gaugeReaderConfig{Interval: 10 * time.Second}},
		{"completer", sc.completer, completerConfig{Name: "r1", MaxAttempts: DefaultMaxAttempts, MaxAge: DefaultMaxAge,
			QueueSize: DefaultConcurrency, StatementDeadline: 2500 * time.Millisecond, ShutdownTimeout: DefaultShutdownTimeout}},
		{"workers", sc.workers, workerPoolConfig{ShutdownTimeout: DefaultShutdownTimeout}},
		{"listener", sc.listener, listenerConfig{RetryMin: 100 * time.Millisecond, RetryMax: 2 * time.Second,
			ConnectTimeout: 10 * time.Second}},
		{"retention", sc.retention, retainerConfig{RetentionConfig: cfg.Retention, SyncTTL: 0}},
		{"claimer", sc.claimer, claimerConfig{Name: "r1", BatchSize: DefaultBatchSize, PollInterval: time.Second,
			Lease: 6 * time.Second, SyncTTL: 0, StatementDeadline: 2500 * time.Millisecond}},
	} {
		if tc.got != tc.want {
			t.Errorf("%s:\n got %+v\nwant %+v", tc.what, tc.got, tc.want)
		}
	}
	if got := (Config{}).withDefaults().serviceConfigs(time.Second).claimer.SyncTTL; got != DefaultUserSyncTTL {
		t.Errorf("claimer SyncTTL by default = %s, want %s", got, DefaultUserSyncTTL)
	}
}

// TestUnitConfigValidate checks that Validate takes a Config as given, a
// zero with no meaning of its own refused, and that every error names its
// field.
func TestUnitConfigValidate(t *testing.T) {
	t.Parallel()
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("DefaultConfig: %v", err)
	}
	c := DefaultConfig()
	c.Concurrency, c.Lease, c.Retry.Max, c.Retention.Interval = 0, 500*time.Millisecond, time.Millisecond, 0
	var joined interface{ Unwrap() []error }
	if err := c.Validate(); !errors.As(err, &joined) {
		t.Fatalf("Validate = %v, want joined errors", err)
	}
	var fields []string
	for _, err := range joined.Unwrap() {
		var ce *ConfigError
		if !errors.As(err, &ce) {
			t.Fatalf("%v is not a *ConfigError", err)
		}
		fields = append(fields, ce.Field)
		if ce.Field == "Retry.Max" && (len(ce.Related) != 1 || ce.Related[0] != "Retry.Base") {
			t.Errorf("Retry.Max: related %v, want [Retry.Base]", ce.Related)
		}
	}
	want := []string{"Concurrency", "Lease", "Retry.Max", "Retention.Interval"}
	if !slices.Equal(fields, want) {
		t.Errorf("fields %v, want %v", fields, want)
	}
}

// TestUnitClaimerWakeupsCoalesce checks that wake-ups never block their
// sender and that one pending wake-up stands for any number.
func TestUnitClaimerWakeupsCoalesce(t *testing.T) {
	t.Parallel()
	c := newClaimer(serviceEnv{}, claimerConfig{}, claimerDeps{})
	for range 3 {
		c.signal()
		c.notify()
	}
	if len(c.wakeups) != 1 || len(c.notifications) != 1 {
		t.Fatalf("pending: %d wake-ups, %d notifications; want 1 of each", len(c.wakeups), len(c.notifications))
	}
	k := &leaseKeeper{changed: make(chan struct{}, 1)}
	k.relaysChanged()
	k.relaysChanged()
	if len(k.changed) != 1 {
		t.Fatalf("%d relays-changed signals pending, want 1", len(k.changed))
	}
}
