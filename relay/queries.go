package relay

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// queries runs the engine's statements (sql.go): one method per
// statement, its arguments named by a params struct when it takes more
// than one, its rows read with pgx.CollectRows. The gauges' read and
// retention's batches are its methods too (adminqueries.go); the
// operator's commands have a sibling type, adminQueries. Nothing else in
// the relay sends SQL, except the LISTEN on the listener's own connection
// (listen.go).
type queries struct {
	db *pgxpool.Pool
}

// claimParams are claimBatch's arguments ($1..$6).
type claimParams struct {
	Limit     int           // at most this many intents
	Relay     string        // the lease owner
	Lease     time.Duration // the lease's length
	SyncTTL   time.Duration // skip window of user and conversation PUTs; 0: none
	AppID     string        // the TalkJS app whose sync records are read
	ParkBatch int           // at most this many blocked intents parked
}

func (p claimParams) args() []any {
	return []any{p.Limit, p.Relay, p.Lease, p.SyncTTL, p.AppID, p.ParkBatch}
}

// claim runs claimBatch.
func (q queries) claim(ctx context.Context, p claimParams) ([]claimedRow, error) {
	rows, err := q.db.Query(ctx, claimBatch, append([]any{planFresh}, p.args()...)...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowToStructByPos[claimedRow])
}

// complete runs completeBatch.
func (q queries) complete(ctx context.Context, p *completeParams) ([]completedRow, error) {
	rows, err := q.db.Query(ctx, completeBatch, planFresh, p.args())
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowToStructByName[completedRow])
}

// renewParams are renewLeases' arguments.
type renewParams struct {
	IDs    []int64
	Tokens []int64 // the lease token of each, in the same order
	Lease  time.Duration
}

// renewLeases runs renewLeases.
func (q queries) renewLeases(ctx context.Context, p renewParams) ([]renewedRow, error) {
	rows, err := q.db.Query(ctx, renewLeases, planFresh, p.IDs, p.Tokens, p.Lease)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowToStructByPos[renewedRow])
}

// expireParams are expireLeases' arguments.
type expireParams struct {
	MaxAttempts int
	MaxAge      time.Duration
	CallTimeout time.Duration
}

// expireLeases runs expireLeases.
func (q queries) expireLeases(ctx context.Context, p expireParams) ([]expiredRow, error) {
	rows, err := q.db.Query(ctx, expireLeases, planFresh, p.MaxAttempts, p.MaxAge, p.CallTimeout)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowToStructByPos[expiredRow])
}

// unparkParams are unparkHeads' arguments.
type unparkParams struct {
	After string // the conversation the last pass ended at
	Limit int    // conversations visited at most
}

// unparkResult is unparkHeads' answer.
type unparkResult struct {
	Last     string // the last conversation visited
	Visited  int
	Unparked int
}

// unparkHeads runs unparkHeads.
func (q queries) unparkHeads(ctx context.Context, p unparkParams) (unparkResult, error) {
	rows, err := q.db.Query(ctx, unparkHeads, planFresh, p.After, p.Limit)
	if err != nil {
		return unparkResult{}, err
	}
	return pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[unparkResult])
}

// heartbeatParams are heartbeat's arguments ($1..$4).
type heartbeatParams struct {
	Relay      string
	LiveWithin time.Duration // relays with a heartbeat this recent count as live
	Version    string
	Rate       float64 // the rate this relay publishes (0: none yet)
}

// heartbeatResult is heartbeat's answer.
type heartbeatResult struct {
	Live   int     // live relays, this one included
	Others float64 // the sum of the others' published rates
}

// heartbeat runs heartbeat.
func (q queries) heartbeat(ctx context.Context, p heartbeatParams) (heartbeatResult, error) {
	rows, err := q.db.Query(ctx, heartbeat, p.Relay, p.LiveWithin, p.Version, p.Rate)
	if err != nil {
		return heartbeatResult{}, err
	}
	return pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[heartbeatResult])
}

// forgetRelay removes the relay's row.
func (q queries) forgetRelay(ctx context.Context, relay string) error {
	_, err := q.db.Exec(ctx, forgetRelays, relay)
	return err
}

// liveRelayNamed reports whether a relay of this name beat within the lease.
func (q queries) liveRelayNamed(ctx context.Context, relay string, lease time.Duration) (bool, error) {
	var taken bool
	err := q.db.QueryRow(ctx, liveRelayNamed, relay, lease).Scan(&taken)
	return taken, err
}

// liveRelays runs liveRelays: the relays with a heartbeat within
// liveWithin, relay included.
func (q queries) liveRelays(ctx context.Context, relay string, liveWithin time.Duration) (int, error) {
	var n int
	err := q.db.QueryRow(ctx, liveRelays, relay, liveWithin).Scan(&n)
	return n, err
}

// checkSchema reads outbox.wakeup: it fails when the schema is missing.
func (q queries) checkSchema(ctx context.Context) error {
	var waiting bool
	return q.db.QueryRow(ctx, schemaCheck).Scan(&waiting)
}

// sessionTimeouts reads the session's statement and lock timeouts.
func (q queries) sessionTimeouts(ctx context.Context) (statement, lock string, err error) {
	err = q.db.QueryRow(ctx, sessionTimeouts).Scan(&statement, &lock)
	return statement, lock, err
}

// setWaiting asks producers for a NOTIFY at their next insert.
func (q queries) setWaiting(ctx context.Context) error {
	_, err := q.db.Exec(ctx, setWaiting)
	return err
}

// wakeRelays sends the wake-up NOTIFY to every relay.
func (q queries) wakeRelays(ctx context.Context) error {
	_, err := q.db.Exec(ctx, wakeRelays)
	return err
}

// relaysChanged tells the other relays that one came or went.
func (q queries) relaysChanged(ctx context.Context) error {
	_, err := q.db.Exec(ctx, relaysChanged)
	return err
}
