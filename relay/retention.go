package relay

import (
	"cmp"
	"context"
	"fmt"
	"time"
)

// RetentionConfig tunes the retention service, which deletes old history in
// small batches on its own schedule, apart from lease renewal: however much
// history there is, a relay's renewals, sweeps and heartbeats never wait
// for it.
type RetentionConfig struct {
	// Done deletes done intents (and their attempts) this long after they
	// were done. Dead intents are never deleted. Zero keeps everything.
	// Default 0.
	Done time.Duration

	// Keys is how long the idempotency key of an intent deleted by
	// retention stays refused, counted from the deletion: an insert with
	// it fails as a duplicate, as while the intent existed. Zero means the
	// default of 30 days; KeepKeysForever (any negative value) keeps
	// retired keys forever.
	Keys time.Duration

	// Interval is the time between two runs. The first run starts with the
	// relay. Default 1m.
	Interval time.Duration

	// BatchSize is the most rows one statement deletes. Default 1000.
	BatchSize int

	// Pause is the wait between two batches of a run, which leaves the
	// database room for the relay's own work. Default 100ms.
	Pause time.Duration

	// MaxPerRun caps the rows of each kind (intents, keys, user syncs) one
	// run deletes; a larger backlog is worked off over several runs.
	// Default 100,000.
	MaxPerRun int

	// StatementTimeout bounds each batch statement on the server (a batch
	// that exceeds it is rolled back and the run ends). Default 10s.
	StatementTimeout time.Duration
}

// Retention defaults.
const (
	DefaultKeyRetention              = 30 * 24 * time.Hour
	DefaultRetentionInterval         = time.Minute
	DefaultRetentionBatchSize        = 1000
	DefaultRetentionPause            = 100 * time.Millisecond
	DefaultRetentionMaxPerRun        = 100_000
	DefaultRetentionStatementTimeout = 10 * time.Second
)

// forgetRelaysAfter is how long a relay may stay silent before its row in
// outbox.relays is deleted (a relay that crashed never removes its own). It
// is far longer than any lease, so only relays long dead are forgotten, and
// longer than the minute `outbox-relay status` lists.
const forgetRelaysAfter = 10 * time.Minute

func (c RetentionConfig) withDefaults() RetentionConfig {
	c.Keys = cmp.Or(c.Keys, DefaultKeyRetention)
	c.Interval = cmp.Or(c.Interval, DefaultRetentionInterval)
	c.BatchSize = cmp.Or(c.BatchSize, DefaultRetentionBatchSize)
	c.Pause = cmp.Or(c.Pause, DefaultRetentionPause)
	c.MaxPerRun = cmp.Or(c.MaxPerRun, DefaultRetentionMaxPerRun)
	c.StatementTimeout = cmp.Or(c.StatementTimeout, DefaultRetentionStatementTimeout)
	return c
}

func (c RetentionConfig) validate() []error {
	var errs []error
	check := func(ok bool, field, format string, args ...any) {
		if !ok {
			errs = append(errs, &ConfigError{Field: "Retention." + field, Reason: fmt.Sprintf(format, args...)})
		}
	}
	check(c.Done >= 0, "Done", "must not be negative, got %s", c.Done)
	check(c.Keys != 0, "Keys", "must not be 0: use KeepKeysForever to keep keys forever")
	check(c.Interval > 0, "Interval", "must be positive, got %s", c.Interval)
	check(c.BatchSize > 0, "BatchSize", "must be positive, got %d", c.BatchSize)
	check(c.Pause >= 0, "Pause", "must not be negative, got %s", c.Pause)
	check(c.MaxPerRun > 0, "MaxPerRun", "must be positive, got %d", c.MaxPerRun)
	check(c.StatementTimeout >= time.Millisecond, "StatementTimeout", "must be at least 1ms, got %s", c.StatementTimeout)
	return errs
}

// retentionRun counts what one run deleted.
type retentionRun struct {
	Intents, Keys, Syncs, Relays int64
	// ConversationSyncs counts conversation-sync records.
	ConversationSyncs int64
}

// retainer is the retention service: one goroutine, one database
// connection at a time, bounded statements.
// It owns no state between runs.
type retainer struct {
	serviceEnv
	cfg retainerConfig
	startStop
}

func newRetainer(env serviceEnv, cfg retainerConfig) *retainer {
	return &retainer{serviceEnv: env, cfg: cfg, startStop: startStop{name: "retention"}}
}

// Start runs retention in the background until Stop: once now, then every
// Interval.
func (s *retainer) Start(ctx context.Context) error { return s.start(ctx, s.loop) }

// Stop cancels the run under way (its batch is rolled back) and waits for
// the service to end. Safe to call twice, and before Start.
func (s *retainer) Stop(ctx context.Context) error { return s.stop(ctx) }

func (s *retainer) loop(ctx context.Context) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		run, err := s.runOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			s.metrics.dbErrors.WithLabelValues("retention").Inc()
			s.log.Warn("retention run failed; trying again next run", "error", err, "next_in", s.cfg.Interval)
		} else if run != (retentionRun{}) {
			s.log.Info("retention", "intents", run.Intents, "keys", run.Keys, "user_syncs", run.Syncs,
				"conversation_syncs", run.ConversationSyncs, "relays", run.Relays)
		}
		t.Reset(s.cfg.Interval)
	}
}

// runOnce applies retention once: silent relays, stale user and
// conversation syncs, done intents (retiring their keys), then retired
// keys past their horizon.
// Each kind is deleted in batches of BatchSize, at most MaxPerRun per run,
// with Pause between batches. It stops at the first error.
func (s *retainer) runOnce(ctx context.Context) (retentionRun, error) {
	var run retentionRun
	q, timeout := s.q, s.cfg.StatementTimeout
	n, err := s.bounded(ctx, func(ctx context.Context) (int64, error) {
		return q.forgetSilentRelays(ctx, timeout, forgetRelaysAfter)
	})
	s.count("relays", &run.Relays, n)
	if err != nil {
		return run, fmt.Errorf("forget silent relays: %w", err)
	}
	// With skipping off (TTL 0) this deletes every record of the app:
	// none is read or written any more.
	syncs := func(del func(context.Context, staleSyncsParams) (int64, error)) batchFunc {
		return func(ctx context.Context, p retentionParams) (int64, error) {
			return del(ctx, staleSyncsParams{retentionParams: p, TTL: s.cfg.SyncTTL, AppID: s.cfg.AppID})
		}
	}
	if err := s.drain(ctx, "user_syncs", &run.Syncs, syncs(q.deleteStaleSyncs)); err != nil {
		return run, fmt.Errorf("delete stale user syncs: %w", err)
	}
	if err := s.drain(ctx, "conversation_syncs", &run.ConversationSyncs, syncs(q.deleteStaleConversationSyncs)); err != nil {
		return run, fmt.Errorf("delete stale conversation syncs: %w", err)
	}
	olderThan := func(age time.Duration, del func(context.Context, olderThanParams) (int64, error)) batchFunc {
		return func(ctx context.Context, p retentionParams) (int64, error) {
			return del(ctx, olderThanParams{retentionParams: p, Age: age})
		}
	}
	if s.cfg.Done > 0 {
		if err := s.drain(ctx, "intents", &run.Intents, olderThan(s.cfg.Done, q.deleteDone)); err != nil {
			return run, fmt.Errorf("delete done intents: %w", err)
		}
	}
	if s.cfg.Keys > 0 {
		if err := s.drain(ctx, "keys", &run.Keys, olderThan(s.cfg.Keys, q.deleteRetiredKeys)); err != nil {
			return run, fmt.Errorf("delete retired keys: %w", err)
		}
	}
	return run, nil
}

// batchFunc runs one batch of a retention statement.
type batchFunc func(context.Context, retentionParams) (int64, error)

// drain runs batch after batch until a batch comes back short or the
// run's cap is reached.
func (s *retainer) drain(ctx context.Context, what string, total *int64, batch batchFunc) error {
	for *total < int64(s.cfg.MaxPerRun) {
		limit := min(int64(s.cfg.BatchSize), int64(s.cfg.MaxPerRun)-*total)
		n, err := s.bounded(ctx, func(ctx context.Context) (int64, error) {
			return batch(ctx, retentionParams{Timeout: s.cfg.StatementTimeout, Limit: limit})
		})
		s.count(what, total, n)
		if err != nil || n < limit {
			return err
		}
		if s.cfg.Pause > 0 {
			t := time.NewTimer(s.cfg.Pause)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
		}
	}
	return nil
}

func (s *retainer) count(what string, total *int64, n int64) {
	*total += n
	if n > 0 {
		s.metrics.retained.WithLabelValues(what).Add(float64(n))
	}
}

// bounded runs one retention statement (in its own transaction under the
// server-side statement timeout, see queries.countRows) with a
// client-side deadline as a backstop for a server that cannot even be told
// to cancel.
func (s *retainer) bounded(ctx context.Context, batch func(context.Context) (int64, error)) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.StatementTimeout+5*time.Second)
	defer cancel()
	return batch(ctx)
}
