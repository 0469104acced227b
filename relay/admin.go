package relay

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Status is the queue at a glance, as `outbox-relay status` prints it.
type Status struct {
	// Counts by state: pending, delivering, done, dead (all four present).
	Counts map[string]int64
	// OldestPending is the age of the oldest pending intent (0 when none).
	OldestPending time.Duration
	// Dead lists the most recent dead intents, newest first.
	Dead []DeadIntent
	// Relays lists relay processes with a heartbeat in the last minute.
	Relays []RelayInfo
}

// DeadIntent is one dead letter.
type DeadIntent struct {
	ID             int64
	Key            *string
	ConversationID string
	Attempts       int
	LastError      *string
	UpdatedAt      time.Time
}

// RelayInfo is one live relay process.
type RelayInfo struct {
	ID          string
	StartedAt   time.Time
	HeartbeatAt time.Time
	Version     string
}

const (
	statusCounts = `
SELECT s.state, coalesce(c.n, 0)
  FROM unnest(ARRAY['pending', 'delivering', 'done', 'dead']) AS s(state)
  LEFT JOIN (SELECT state, count(*) AS n FROM outbox.intents GROUP BY state) c USING (state)`

	statusOldestPending = `
SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)
  FROM outbox.intents
 WHERE state = 'pending'`

	statusDead = `
SELECT id, key, conversation_id, attempts, last_error, updated_at
  FROM outbox.intents
 WHERE state = 'dead'
 ORDER BY updated_at DESC, id DESC
 LIMIT $1`

	statusRelays = `
SELECT id, started_at, heartbeat_at, version
  FROM outbox.relays
 WHERE heartbeat_at > now() - interval '1 minute'
 ORDER BY started_at`

	// retryDead puts the given dead intents back to pending with a fresh
	// retry budget, and wakes the relays.
	retryDead = `
WITH retried AS (
    UPDATE outbox.intents
       SET state = 'pending',
           attempts = 0,
           run_after = now(),
           retried_at = now(),
           updated_at = now()
     WHERE state = 'dead'
       AND (id = ANY($1::bigint[]) OR $2)
    RETURNING id
)
SELECT id, pg_notify('` + notifyChannel + `', '') IS NULL FROM retried ORDER BY id`

	intentStates = `SELECT id, state FROM outbox.intents WHERE id = ANY($1::bigint[])`
)

// ReadStatus reads the queue's status, listing up to deadLimit dead intents.
func ReadStatus(ctx context.Context, pool *pgxpool.Pool, deadLimit int) (Status, error) {
	st := Status{Counts: map[string]int64{}}
	rows, err := pool.Query(ctx, statusCounts)
	if err != nil {
		return st, fmt.Errorf("status: %w", err)
	}
	for rows.Next() {
		var state string
		var n int64
		if err := rows.Scan(&state, &n); err != nil {
			rows.Close()
			return st, fmt.Errorf("status: %w", err)
		}
		st.Counts[state] = n
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return st, fmt.Errorf("status: %w", err)
	}
	var oldest float64
	if err := pool.QueryRow(ctx, statusOldestPending).Scan(&oldest); err != nil {
		return st, fmt.Errorf("status: oldest pending: %w", err)
	}
	st.OldestPending = time.Duration(oldest * float64(time.Second))

	dead, err := pool.Query(ctx, statusDead, deadLimit)
	if err != nil {
		return st, fmt.Errorf("status: dead: %w", err)
	}
	st.Dead, err = pgx.CollectRows(dead, func(row pgx.CollectableRow) (DeadIntent, error) {
		var d DeadIntent
		err := row.Scan(&d.ID, &d.Key, &d.ConversationID, &d.Attempts, &d.LastError, &d.UpdatedAt)
		return d, err
	})
	if err != nil {
		return st, fmt.Errorf("status: dead: %w", err)
	}
	relays, err := pool.Query(ctx, statusRelays)
	if err != nil {
		return st, fmt.Errorf("status: relays: %w", err)
	}
	st.Relays, err = pgx.CollectRows(relays, pgx.RowToStructByPos[RelayInfo])
	if err != nil {
		return st, fmt.Errorf("status: relays: %w", err)
	}
	return st, nil
}

// RetryResult says what Retry did with each id asked for.
type RetryResult struct {
	// Retried are the dead intents put back to pending.
	Retried []int64
	// NotDead maps ids that exist but were not dead to their state.
	NotDead map[int64]string
	// NotFound are ids with no intent.
	NotFound []int64
}

// Retry puts dead intents back to pending with a fresh retry budget: the
// given ids, or every dead intent when allDead is set. Ids that are not dead
// are left alone and reported.
func Retry(ctx context.Context, pool *pgxpool.Pool, ids []int64, allDead bool) (RetryResult, error) {
	res := RetryResult{NotDead: map[int64]string{}}
	if ids == nil {
		ids = []int64{}
	}
	rows, err := pool.Query(ctx, retryDead, ids, allDead)
	if err != nil {
		return res, fmt.Errorf("retry: %w", err)
	}
	res.Retried, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (int64, error) {
		var id int64
		var ignored bool
		err := row.Scan(&id, &ignored)
		return id, err
	})
	if err != nil {
		return res, fmt.Errorf("retry: %w", err)
	}
	if len(ids) == 0 {
		return res, nil
	}
	retried := map[int64]bool{}
	for _, id := range res.Retried {
		retried[id] = true
	}
	states := map[int64]string{}
	rows, err = pool.Query(ctx, intentStates, ids)
	if err != nil {
		return res, fmt.Errorf("retry: %w", err)
	}
	for rows.Next() {
		var id int64
		var state string
		if err := rows.Scan(&id, &state); err != nil {
			rows.Close()
			return res, fmt.Errorf("retry: %w", err)
		}
		states[id] = state
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return res, fmt.Errorf("retry: %w", err)
	}
	for _, id := range ids {
		switch state, ok := states[id]; {
		case !ok:
			res.NotFound = append(res.NotFound, id)
		case !retried[id]:
			res.NotDead[id] = state
		}
	}
	return res, nil
}
