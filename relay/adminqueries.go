package relay

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// dbtx is what both a pool and a transaction offer: the admin statements
// run on either.
type dbtx interface {
	Exec(context.Context, string, ...any) (pgconn.CommandTag, error)
	Query(context.Context, string, ...any) (pgx.Rows, error)
	QueryRow(context.Context, string, ...any) pgx.Row
}

// adminQueries runs the statements of the operator's commands (status,
// inspect, retry, cancel, purge, pause, resume): the sibling of queries,
// one method per statement, its arguments named by a params struct when
// it takes more than one, its rows read by name with pgx.CollectRows.
type adminQueries struct {
	db dbtx
}

// statusCountsRow is statusCounts' answer.
type statusCountsRow struct {
	Pending       int64 `db:"pending"`
	Delivering    int64 `db:"delivering"`
	Dead          int64 `db:"dead"`
	Done          int64 `db:"done"`
	DoneEstimated bool  `db:"done_estimated"`
}

// statusCounts runs statusCounts; done is exact below exactDoneLimit rows.
func (q adminQueries) statusCounts(ctx context.Context, exactDoneLimit int) (statusCountsRow, error) {
	rows, err := q.db.Query(ctx, statusCounts, exactDoneLimit)
	if err != nil {
		return statusCountsRow{}, err
	}
	return pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[statusCountsRow])
}

// seconds runs a statement that answers one number of seconds.
func (q adminQueries) seconds(ctx context.Context, stmt string) (time.Duration, error) {
	rows, err := q.db.Query(ctx, stmt)
	if err != nil {
		return 0, err
	}
	s, err := pgx.CollectExactlyOneRow(rows, pgx.RowTo[float64])
	return time.Duration(s * float64(time.Second)), err
}

// oldestPending runs statusOldestPending.
func (q adminQueries) oldestPending(ctx context.Context) (time.Duration, error) {
	return q.seconds(ctx, statusOldestPending)
}

// lag runs statusLag.
func (q adminQueries) lag(ctx context.Context) (time.Duration, error) {
	return q.seconds(ctx, statusLag)
}

// failedCalls runs statusFailedCalls.
func (q adminQueries) failedCalls(ctx context.Context) ([]FailedCalls, error) {
	rows, err := q.db.Query(ctx, statusFailedCalls)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowToStructByName[FailedCalls])
}

// deadIntents runs statusDead: the limit most recent dead intents.
func (q adminQueries) deadIntents(ctx context.Context, limit int) ([]DeadIntent, error) {
	rows, err := q.db.Query(ctx, statusDead, limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowToStructByName[DeadIntent])
}

// liveRelays runs statusRelays.
func (q adminQueries) liveRelays(ctx context.Context) ([]RelayInfo, error) {
	rows, err := q.db.Query(ctx, statusRelays)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowToStructByName[RelayInfo])
}

// pauseRow is readControl's answer.
type pauseRow struct {
	Since  time.Time `db:"paused_at"`
	By     string    `db:"paused_by"`
	Reason *string   `db:"reason"`
}

// readPause runs readControl: nil when delivery is not paused.
func (q adminQueries) readPause(ctx context.Context) (*OperatorPause, error) {
	rows, err := q.db.Query(ctx, readControl)
	if err != nil {
		return nil, err
	}
	r, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[pauseRow])
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	p := &OperatorPause{Since: r.Since, By: r.By}
	if r.Reason != nil {
		p.Reason = *r.Reason
	}
	return p, nil
}

// pause runs pauseDelivery in one transaction of four statements, in an
// order the pause's guarantee forces: the lock timeout first (it bounds
// the wait for the lock), then the table's ACCESS EXCLUSIVE lock (which
// waits for the claims already reading the row, see control.go), then the
// update, then the read of the pause in force, under the same lock, so it
// is the one the update left. It reports whether this call started it.
func (q adminQueries) pause(ctx context.Context, pool *pgxpool.Pool, reason string) (*OperatorPause, bool, error) {
	var p *OperatorPause
	var started bool
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = '%dms'", pauseLockTimeout.Milliseconds())); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, lockControl); err != nil {
			return fmt.Errorf("lock outbox.control (a session may hold it in an open transaction): %w", err)
		}
		tag, err := tx.Exec(ctx, pauseDelivery, reason)
		if err != nil {
			return err
		}
		started = tag.RowsAffected() == 1
		p, err = adminQueries{db: tx}.readPause(ctx)
		return err
	})
	return p, started, err
}

// resumeRow is resumeDelivery's answer.
type resumeRow struct {
	Ended    int  `db:"ended"`
	Notified bool `db:"notified"`
}

// resume runs resumeDelivery and reports whether a pause ended.
func (q adminQueries) resume(ctx context.Context) (bool, error) {
	rows, err := q.db.Query(ctx, resumeDelivery)
	if err != nil {
		return false, err
	}
	r, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[resumeRow])
	return r.Ended > 0, err
}

// inspectParams are inspectIntent's arguments: the intent with ID, or
// with Key when Key is not "".
type inspectParams struct {
	ID  int64
	Key string
}

func (p inspectParams) args() pgx.NamedArgs {
	if p.Key != "" {
		return pgx.NamedArgs{"id": nil, "key": p.Key}
	}
	return pgx.NamedArgs{"id": p.ID, "key": nil}
}

// inspectIntent runs inspectIntent; pgx.ErrNoRows when there is none.
func (q adminQueries) inspectIntent(ctx context.Context, p inspectParams) (Intent, error) {
	rows, err := q.db.Query(ctx, inspectIntent, p.args())
	if err != nil {
		return Intent{}, err
	}
	return pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[Intent])
}

// inspectCalls runs inspectCalls: the calls of intent id, in order.
func (q adminQueries) inspectCalls(ctx context.Context, id int64) ([]Call, error) {
	rows, err := q.db.Query(ctx, inspectCalls, pgx.NamedArgs{"id": id})
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowToStructByName[Call])
}

// selectParams are the arguments of selectWhere and of the operator's
// statements built on it: the Selection, in state State.
type selectParams struct {
	Selection
	State State
}

// selectIntents runs selectWhere: the ids of the selected intents.
func (q adminQueries) selectIntents(ctx context.Context, p selectParams) ([]int64, error) {
	rows, err := q.db.Query(ctx, selectWhere, p.args(p.State))
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[int64])
}

// actedRow is the answer of retrySelected, cancelSelected and
// purgeSelected, one per intent changed.
type actedRow struct {
	ID       int64 `db:"id"`
	Notified bool  `db:"notified"`
}

// actOnSelected runs stmt (retrySelected, cancelSelected or
// purgeSelected) and returns the ids it changed.
func (q adminQueries) actOnSelected(ctx context.Context, stmt string, p selectParams) ([]int64, error) {
	rows, err := q.db.Query(ctx, stmt, p.args(p.State))
	if err != nil {
		return nil, err
	}
	acted, err := pgx.CollectRows(rows, pgx.RowToStructByName[actedRow])
	if err != nil {
		return nil, err
	}
	ids := make([]int64, len(acted))
	for i, a := range acted {
		ids[i] = a.ID
	}
	return ids, nil
}

// intentStates runs intentStatesByID.
func (q adminQueries) intentStates(ctx context.Context, ids []int64) ([]idState, error) {
	rows, err := q.db.Query(ctx, intentStatesByID, pgx.NamedArgs{"ids": ids})
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowToStructByName[idState])
}

// inTimedTx runs fn in a transaction whose statements the server cuts at
// timeout. The set_config must be the transaction's first statement (it
// is local to the transaction and bounds what follows), which is why
// these are two statements in one transaction, not one.
func inTimedTx(ctx context.Context, pool *pgxpool.Pool, timeout time.Duration, fn func(q dbtx) error) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		ms := strconv.FormatInt(max(1, timeout.Milliseconds()), 10)
		if _, err := tx.Exec(ctx, `SELECT set_config('statement_timeout', $1, true)`, ms); err != nil {
			return err
		}
		return fn(tx)
	})
}

// gaugesRow is readGauges' answer.
type gaugesRow struct {
	Pending    int64   `db:"pending"`
	Delivering int64   `db:"delivering"`
	Dead       int64   `db:"dead"`
	LagS       float64 `db:"lag_s"`
}

// readGauges runs readGauges under the server-side timeout.
func (q queries) readGauges(ctx context.Context, timeout time.Duration) (gaugesRow, error) {
	var g gaugesRow
	err := inTimedTx(ctx, q.db, timeout, func(tx dbtx) error {
		rows, err := tx.Query(ctx, readGauges, planFresh)
		if err != nil {
			return err
		}
		g, err = pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[gaugesRow])
		return err
	})
	return g, err
}

// countRows runs a retention statement (it answers one count) in its own
// transaction under the server-side timeout.
func (q queries) countRows(ctx context.Context, timeout time.Duration, stmt string, args ...any) (int64, error) {
	var n int64
	err := inTimedTx(ctx, q.db, timeout, func(tx dbtx) error {
		rows, err := tx.Query(ctx, stmt, append([]any{planFresh}, args...)...)
		if err != nil {
			return err
		}
		n, err = pgx.CollectExactlyOneRow(rows, pgx.RowTo[int64])
		return err
	})
	return n, err
}

// retentionParams are the arguments every retention statement shares.
type retentionParams struct {
	Timeout time.Duration // the server-side statement timeout
	Limit   int64         // at most this many rows
}

// forgetSilentRelays runs forgetSilentRelays: relays silent for after.
func (q queries) forgetSilentRelays(ctx context.Context, timeout, after time.Duration) (int64, error) {
	return q.countRows(ctx, timeout, forgetSilentRelays, after)
}

// staleSyncsParams are deleteStaleSyncs' and
// deleteStaleConversationSyncs' arguments.
type staleSyncsParams struct {
	retentionParams
	TTL   time.Duration // this app's records older than this; 0: all
	AppID string
}

// deleteStaleSyncs runs deleteStaleSyncs.
func (q queries) deleteStaleSyncs(ctx context.Context, p staleSyncsParams) (int64, error) {
	return q.countRows(ctx, p.Timeout, deleteStaleSyncs, p.TTL, p.AppID, p.Limit)
}

// deleteStaleConversationSyncs runs deleteStaleConversationSyncs.
func (q queries) deleteStaleConversationSyncs(ctx context.Context, p staleSyncsParams) (int64, error) {
	return q.countRows(ctx, p.Timeout, deleteStaleConversationSyncs, p.TTL, p.AppID, p.Limit)
}

// olderThanParams are deleteDone's and deleteRetiredKeys' arguments.
type olderThanParams struct {
	retentionParams
	Age time.Duration // rows done (retired) longer ago than this
}

// deleteDone runs deleteDone.
func (q queries) deleteDone(ctx context.Context, p olderThanParams) (int64, error) {
	return q.countRows(ctx, p.Timeout, deleteDone, p.Age, p.Limit)
}

// deleteRetiredKeys runs deleteRetiredKeys.
func (q queries) deleteRetiredKeys(ctx context.Context, p olderThanParams) (int64, error) {
	return q.countRows(ctx, p.Timeout, deleteRetiredKeys, p.Age, p.Limit)
}
