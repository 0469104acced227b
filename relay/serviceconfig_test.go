package relay

import (
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
