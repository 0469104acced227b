package relay

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Status is the queue at a glance, as `outbox-relay status` prints it.
type Status struct {
	// Counts by state: pending, delivering, done, dead (all four present).
	// Pending, delivering and dead are exact; done is exact below
	// ExactDoneLimit rows and the planner's estimate above (DoneEstimated).
	Counts map[State]int64
	// DoneEstimated is true when Counts[StateDone] is an estimate.
	DoneEstimated bool
	// OldestPending is the age of the oldest pending intent (0 when none).
	OldestPending time.Duration
	// Dead lists the most recent dead intents, newest first.
	Dead []DeadIntent
	// Lag is the age of the intent a relay would claim next (pending, due,
	// first of its conversation); 0 when there is none.
	Lag time.Duration
	// Relays lists relay processes with a heartbeat in the last minute.
	Relays []RelayInfo
	// FailedCalls counts the failed calls of the last hour by step and
	// outcome, most first.
	FailedCalls []FailedCalls
	// Paused is the operator's pause, nil when delivery is not paused.
	Paused *OperatorPause
}

// FailedCalls is how many calls of one step failed one way in the last hour.
type FailedCalls struct {
	Step    string `db:"step" json:"step"`
	Outcome string `db:"outcome" json:"outcome"`
	Calls   int64  `db:"calls" json:"calls"`
}

// DeadIntent is one dead letter.
type DeadIntent struct {
	ID             int64     `db:"id"`
	Key            *string   `db:"key"`
	ConversationID string    `db:"conversation_id"`
	Attempts       int       `db:"attempts"`
	LastError      *string   `db:"last_error"`
	UpdatedAt      time.Time `db:"updated_at"`
}

// RelayInfo is one live relay process.
type RelayInfo struct {
	ID          string    `db:"id"`
	StartedAt   time.Time `db:"started_at"`
	HeartbeatAt time.Time `db:"heartbeat_at"`
	Version     string    `db:"version"`
}

const (
	// statusCounts counts the active states and dead letters through their
	// partial indexes. Counting done intents means reading the whole
	// history (850 ms for a million), so above $1 rows (the planner's
	// estimate, kept by autovacuum) done is that estimate less the others.
	statusCounts = `
WITH active AS (
    SELECT (SELECT count(*) FROM outbox.intents WHERE state = 'pending') AS pending,
           (SELECT count(*) FROM outbox.intents WHERE state = 'delivering') AS delivering,
           (SELECT count(*) FROM outbox.intents WHERE state = 'dead') AS dead
), est AS (
    SELECT c.reltuples::bigint AS n FROM pg_catalog.pg_class c WHERE c.oid = 'outbox.intents'::regclass
)
SELECT a.pending, a.delivering, a.dead,
       CASE WHEN e.n < $1 THEN (SELECT count(*) FROM outbox.intents WHERE state = 'done')
            ELSE greatest(e.n - a.pending - a.delivering - a.dead, 0) END AS done,
       e.n >= $1 AS done_estimated
  FROM active a, est e`

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

	statusLag = `SELECT lag_s FROM outbox.lag`

	// The rows of one batch users call (one per intent and user it
	// served) share a call_id: they count as one call.
	statusFailedCalls = `
SELECT step, outcome, count(*) FILTER (WHERE call_id IS NULL) + count(DISTINCT call_id) AS calls
  FROM outbox.attempts
 WHERE started_at > now() - interval '1 hour'
   AND outcome NOT IN ('ok', 'skipped')
 GROUP BY step, outcome
 ORDER BY calls DESC, step, outcome`

	statusRelays = `
SELECT id, started_at, heartbeat_at, version
  FROM outbox.relays
 WHERE heartbeat_at > now() - interval '1 minute'
 ORDER BY started_at`
)

// ExactDoneLimit is the table size (the planner's estimate of its rows)
// up to which status counts done intents exactly.
const ExactDoneLimit = 100_000

// ReadStatus reads the queue's status, listing up to deadLimit dead intents.
func ReadStatus(ctx context.Context, pool *pgxpool.Pool, deadLimit int) (Status, error) {
	q := adminQueries{db: pool}
	st := Status{Counts: map[State]int64{}}
	c, err := q.statusCounts(ctx, ExactDoneLimit)
	if err != nil {
		return st, fmt.Errorf("status: counts: %w", err)
	}
	st.Counts = map[State]int64{StatePending: c.Pending, StateDelivering: c.Delivering, StateDone: c.Done, StateDead: c.Dead}
	st.DoneEstimated = c.DoneEstimated
	if st.OldestPending, err = q.oldestPending(ctx); err != nil {
		return st, fmt.Errorf("status: oldest pending: %w", err)
	}
	if st.Lag, err = q.lag(ctx); err != nil {
		return st, fmt.Errorf("status: lag: %w", err)
	}
	if st.FailedCalls, err = q.failedCalls(ctx); err != nil {
		return st, fmt.Errorf("status: failed calls: %w", err)
	}
	if st.Dead, err = q.deadIntents(ctx, deadLimit); err != nil {
		return st, fmt.Errorf("status: dead: %w", err)
	}
	if st.Paused, err = ReadPause(ctx, pool); err != nil {
		return st, fmt.Errorf("status: %w", err)
	}
	if st.Relays, err = q.liveRelays(ctx); err != nil {
		return st, fmt.Errorf("status: relays: %w", err)
	}
	return st, nil
}
