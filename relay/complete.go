package relay

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

const levelDebug = slog.LevelDebug

// maxCompletionBatch bounds one completion transaction.
const maxCompletionBatch = 500

// completeLoop writes results as they come, batching whatever is ready into
// one transaction: no added latency when idle, few round trips under load.
// It returns when results is closed and drained.
func (r *Relay) completeLoop() {
	for {
		res, ok := <-r.results
		if !ok {
			return
		}
		batch := []*result{res}
	more:
		for len(batch) < maxCompletionBatch {
			select {
			case res, ok := <-r.results:
				if !ok {
					break more
				}
				batch = append(batch, res)
			default:
				break more
			}
		}
		r.writeResults(batch)
	}
}

// writeResults records a batch, retrying while the database is unreachable.
// A result is kept until written: its attempts happened and must be
// recorded, and its lease is only given up by the write. Should the lease
// expire first, the fenced update simply changes nothing.
func (r *Relay) writeResults(batch []*result) {
	retry := dbRetryMin
	for {
		ctx, cancel := context.WithTimeout(context.Background(), dbTimeout)
		err := r.completeBatch(ctx, batch)
		cancel()
		if err == nil {
			r.setDB(true, "", nil)
			break
		}
		r.setDB(false, "complete", err)
		// While running, keep trying: workers wait for the completer,
		// which stops claiming (back-pressure). Only a shutdown gives up,
		// once its timeout has passed since Stop.
		if r.stopping.Load() && time.Since(r.stoppedAt()) > r.cfg.ShutdownTimeout {
			r.log.Error("shutting down without recording results; the intents will be redelivered after their lease",
				"intents", len(batch), "error", err)
			break
		}
		time.Sleep(retry)
		retry = min(2*retry, dbRetryMax)
	}
	for _, res := range batch {
		r.held.remove(res.job)
	}
	r.signal()
}

func (r *Relay) completeBatch(ctx context.Context, batch []*result) error {
	n := len(batch)
	ids := make([]int64, n)
	tokens := make([]int64, n)
	outcomes := make([]string, n)
	errs := make([]*string, n)
	delays := make([]float64, n)
	var calls [][]any
	// user id -> hash, nil hash: forget (expire) the sync.
	syncedByID := map[string][]byte{}
	for i, res := range batch {
		ids[i], tokens[i], outcomes[i] = res.job.id, res.job.token, res.outcome
		if res.err != "" {
			errs[i] = &res.err
		}
		delays[i] = res.delay.Seconds()
		for _, c := range res.calls {
			var status, errText any
			if c.status != 0 {
				status = int32(c.status)
			}
			if c.err != "" {
				errText = c.err
			}
			calls = append(calls, []any{res.job.id, int32(res.job.attempt), c.step, c.target, status,
				c.outcome, errText, float32(c.duration.Seconds() * 1000), r.cfg.Name, c.started})
		}
		for _, id := range res.forget {
			if _, ok := syncedByID[id]; !ok {
				syncedByID[id] = nil
			}
		}
		for _, s := range res.synced {
			syncedByID[s.id] = s.hash // a PUT that succeeded wins
		}
	}

	tx, err := r.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("complete: begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()

	if len(calls) > 0 {
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"outbox", "attempts"},
			[]string{"intent_id", "attempt", "step", "target", "status", "outcome", "error", "duration_ms", "relay", "started_at"},
			pgx.CopyFromRows(calls)); err != nil {
			return fmt.Errorf("complete: record attempts: %w", err)
		}
	}

	rows, err := tx.Query(ctx, completeBatch, ids, tokens, outcomes, errs, delays,
		r.cfg.MaxAttempts, r.cfg.MaxAge)
	if err != nil {
		return fmt.Errorf("complete: %w", err)
	}
	final := make(map[int64]string, n)
	var parkConv []string
	var parkID []int64
	var parkUntil []time.Time
	for rows.Next() {
		var id int64
		var state, conv string
		var runAfter time.Time
		if err := rows.Scan(&id, &state, &conv, &runAfter); err != nil {
			rows.Close()
			return fmt.Errorf("complete: %w", err)
		}
		final[id] = state
		if state == "pending" {
			parkConv, parkID, parkUntil = append(parkConv, conv), append(parkID, id), append(parkUntil, runAfter)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("complete: %w", err)
	}
	if len(parkID) > 0 {
		if _, err := tx.Exec(ctx, parkSuccessors, parkConv, parkID, parkUntil); err != nil {
			return fmt.Errorf("complete: park successors: %w", err)
		}
	}

	if len(syncedByID) > 0 {
		// Sorted, so concurrent relays lock synced_users rows in the same
		// order and cannot deadlock.
		userIDs := make([]string, 0, len(syncedByID))
		for id := range syncedByID {
			userIDs = append(userIDs, id)
		}
		slices.Sort(userIDs)
		hashes := make([][]byte, len(userIDs))
		ok := make([]bool, len(userIDs))
		for i, id := range userIDs {
			hashes[i], ok[i] = syncedByID[id], syncedByID[id] != nil
			if hashes[i] == nil {
				hashes[i] = []byte{}
			}
		}
		if _, err := tx.Exec(ctx, upsertSyncedUsers, userIDs, hashes, ok); err != nil {
			return fmt.Errorf("complete: record synced users: %w", err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("complete: commit: %w", err)
	}

	for _, res := range batch {
		state, ok := final[res.job.id]
		if !ok {
			r.metrics.fenced.Inc()
			r.log.Warn("result discarded: the intent's lease passed to another relay",
				"intent_id", res.job.id, "attempt", res.job.attempt, "outcome", res.outcome)
			continue
		}
		label := res.outcome
		if res.outcome == outcomeRetry && state == "dead" {
			label = outcomeDead
		}
		r.metrics.completed.WithLabelValues(label).Inc()
		if state == "dead" {
			r.log.Warn("intent dead", "intent_id", res.job.id, "attempt", res.job.attempt,
				"error", firstLine(res.err))
		}
	}
	return nil
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
