package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ErrNotFound is returned when no intent matches an operator's lookup.
var ErrNotFound = errors.New("no such intent")

// CancelReason is the last_error of an intent an operator cancelled.
const CancelReason = "cancelled by operator"

// Intent is one intent as an operator sees it.
type Intent struct {
	ID             int64           `db:"id" json:"id"`
	Key            *string         `db:"key" json:"key"`
	ConversationID string          `db:"conversation_id" json:"conversation_id"`
	State          State           `db:"state" json:"state"`
	Attempts       int             `db:"attempts" json:"attempts"`
	LastError      *string         `db:"last_error" json:"last_error"`
	Payload        json.RawMessage `db:"payload" json:"payload"`
	CreatedAt      time.Time       `db:"created_at" json:"created_at"`
	UpdatedAt      time.Time       `db:"updated_at" json:"updated_at"`
	DoneAt         *time.Time      `db:"done_at" json:"done_at"`
	RunAfter       time.Time       `db:"run_after" json:"run_after"`
	LeaseOwner     *string         `db:"lease_owner" json:"lease_owner"`
	LeaseExpiresAt *time.Time      `db:"lease_expires_at" json:"lease_expires_at"`
	RetriedAt      *time.Time      `db:"retried_at" json:"retried_at"`
}

// Call is one recorded TalkJS call (or skipped user PUT) of an intent.
type Call struct {
	Attempt   int       `db:"attempt" json:"attempt"`
	Step      string    `db:"step" json:"step"`
	Target    string    `db:"target" json:"target"`
	Status    *int      `db:"status" json:"status"`
	Outcome   string    `db:"outcome" json:"outcome"`
	Error     *string   `db:"error" json:"error"`
	DurationS float64   `db:"duration_s" json:"duration_s"`
	Relay     string    `db:"relay" json:"relay"`
	StartedAt time.Time `db:"started_at" json:"started_at"`
	// CallID is shared by the rows of one batch call (one per intent and
	// user it served); nil for a call made for this intent alone.
	CallID *string `db:"call_id" json:"call_id"`
}

// Selection picks intents for an operator's command. IDs and Key name
// intents; the filters (Since, Before, ErrorLike) and All select among the intents
// in the state the command acts on. At least one of them must be set.
type Selection struct {
	// IDs are intent ids.
	IDs []int64
	// Key is an application's idempotency key.
	Key string
	// All selects every intent in the command's state.
	All bool
	// Since keeps intents whose last change (for dead intents: when they
	// died) is at or after it.
	Since time.Time
	// Before keeps intents whose last change is before it.
	Before time.Time
	// ErrorLike keeps intents whose last_error matches this ILIKE pattern.
	ErrorLike string
	// Limit caps how many intents are acted on, lowest ids first; 0 for
	// no cap.
	Limit int
}

// validate reports a Selection that selects nothing by itself.
func (s Selection) validate() error {
	if len(s.IDs) == 0 && s.Key == "" && !s.All && s.Since.IsZero() && s.Before.IsZero() && s.ErrorLike == "" {
		return errors.New("select intents: give ids, a key, or a filter")
	}
	if s.Limit < 0 {
		return fmt.Errorf("select intents: limit must not be negative, got %d", s.Limit)
	}
	return nil
}

// args are the named arguments of selectWhere.
func (s Selection) args(state State) pgx.NamedArgs {
	a := pgx.NamedArgs{
		"state":      string(state),
		"ids":        s.IDs,
		"key":        nil,
		"all":        s.All,
		"since":      nil,
		"before":     nil,
		"error_like": nil,
		"limit":      nil,
	}
	if s.IDs == nil {
		a["ids"] = []int64{}
	}
	if s.Key != "" {
		a["key"] = s.Key
	}
	if !s.Since.IsZero() {
		a["since"] = s.Since
	}
	if !s.Before.IsZero() {
		a["before"] = s.Before
	}
	if s.ErrorLike != "" {
		a["error_like"] = s.ErrorLike
	}
	if s.Limit > 0 {
		a["limit"] = s.Limit
	}
	return a
}

const (
	// selectWhere picks the intents of a Selection in state @state: named
	// ones (ids, key) or, with a filter or all, every one the filters keep.
	// Named ones are narrowed by the filters too.
	selectWhere = `
SELECT id
  FROM outbox.intents
 WHERE state = @state
   AND (@all OR id = ANY(@ids::bigint[]) OR key = @key::text
        OR (@ids::bigint[] = '{}' AND @key::text IS NULL
            AND (@since::timestamptz IS NOT NULL OR @before::timestamptz IS NOT NULL
                 OR @error_like::text IS NOT NULL)))
   AND (@since::timestamptz IS NULL OR updated_at >= @since)
   AND (@before::timestamptz IS NULL OR updated_at < @before)
   AND (@error_like::text IS NULL OR last_error ILIKE @error_like)
 ORDER BY id
 LIMIT @limit::int`

	inspectIntent = `
SELECT id, key, conversation_id, state, attempts, last_error, payload, created_at, updated_at,
       done_at, run_after, lease_owner, lease_expires_at, retried_at
  FROM outbox.intents
 WHERE id = @id OR key = @key`

	inspectCalls = `
SELECT attempt, step, target, status, outcome, error, (duration_ms / 1000)::double precision AS duration_s,
       relay, started_at, call_id::text AS call_id
  FROM outbox.attempts
 WHERE intent_id = @id
 ORDER BY id`

	// retrySelected puts the selected dead intents back to pending with a
	// fresh retry budget and wakes the relays.
	retrySelected = `
WITH retried AS (
    UPDATE outbox.intents
       SET state = 'pending',
           attempts = 0,
           run_after = now(),
           parked = false, -- the claim parks it again if it waits behind another
           retried_at = now(),
           failing_since = NULL, -- the age budget starts again at the next failure
           updated_at = now()
     WHERE id IN (` + selectWhere + `)
       AND state = 'dead'
    RETURNING id
)
SELECT id, pg_notify('` + notifyChannel + `', '') IS NULL AS notified FROM retried ORDER BY id`

	// cancelSelected makes the selected pending intents dead, and wakes the
	// relays: the intents after them in their conversations may go now.
	cancelSelected = `
WITH cancelled AS (
    UPDATE outbox.intents
       SET state = 'dead',
           last_error = '` + CancelReason + `',
           updated_at = now()
     WHERE id IN (` + selectWhere + `)
       AND state = 'pending'
    RETURNING id, conversation_id
), unparked AS (
    -- The next intent of each conversation may go now (see unparkNextOf).
    UPDATE outbox.intents s
       SET parked = false
      FROM cancelled c` + unparkNextOf + `
)
SELECT id, pg_notify('` + notifyChannel + `', '') IS NULL AS notified FROM cancelled ORDER BY id`

	// purgeSelected deletes the selected dead intents with their attempts,
	// and retires their keys as retention does (see deleteDone): some of a
	// dead intent's calls may have reached TalkJS, so an application retry
	// with its key must still be refused.
	purgeSelected = `
WITH gone AS (
    DELETE FROM outbox.intents
     WHERE id IN (` + selectWhere + `)
       AND state = 'dead'
    RETURNING id, key
), retired AS (
    INSERT INTO outbox.retired_keys (key, intent_id, retired_at)
    SELECT key, id, now() FROM gone WHERE key IS NOT NULL
    ON CONFLICT (key) DO UPDATE
       SET intent_id = excluded.intent_id,
           retired_at = excluded.retired_at
), calls AS (
    DELETE FROM outbox.attempts a USING gone WHERE a.intent_id = gone.id
)
SELECT id, true AS notified FROM gone ORDER BY id`

	intentStatesByID = `SELECT id, state FROM outbox.intents WHERE id = ANY(@ids::bigint[])`
)

// Inspect returns the intent with id (when key is "") or with key, and
// every call recorded for it in order. It returns ErrNotFound when there is
// none.
func Inspect(ctx context.Context, pool *pgxpool.Pool, id int64, key string) (Intent, []Call, error) {
	q := adminQueries{db: pool}
	in, err := q.inspectIntent(ctx, inspectParams{ID: id, Key: key})
	if errors.Is(err, pgx.ErrNoRows) {
		return Intent{}, nil, ErrNotFound
	}
	if err != nil {
		return Intent{}, nil, fmt.Errorf("inspect: %w", err)
	}
	calls, err := q.inspectCalls(ctx, in.ID)
	if err != nil {
		return Intent{}, nil, fmt.Errorf("inspect: calls: %w", err)
	}
	return in, calls, nil
}

// Action is what an operator's command did, or would do with DryRun.
type Action struct {
	// Changed are the intents changed (with DryRun: that would be).
	Changed []int64 `json:"changed"`
	// Skipped maps named ids that exist but are not in the state the
	// command acts on to their state.
	Skipped map[int64]State `json:"skipped"`
	// NotFound are named ids with no intent.
	NotFound []int64 `json:"not_found"`
}

// Retry puts the selected dead intents back to pending with a fresh retry
// budget. With dryRun it only reports which it would retry.
func Retry(ctx context.Context, pool *pgxpool.Pool, sel Selection, dryRun bool) (Action, error) {
	return act(ctx, pool, operatorCommand{"retry", StateDead, retrySelected}, sel, dryRun)
}

// Cancel makes the selected pending intents dead with the reason
// CancelReason; the intents after them in their conversations go ahead.
// An intent being delivered is not cancelled (its attempt is under way)
// and is reported as skipped. With dryRun it only reports.
func Cancel(ctx context.Context, pool *pgxpool.Pool, sel Selection, dryRun bool) (Action, error) {
	return act(ctx, pool, operatorCommand{"cancel", StatePending, cancelSelected}, sel, dryRun)
}

// Purge deletes the selected dead intents and their attempts. With dryRun
// it only reports.
func Purge(ctx context.Context, pool *pgxpool.Pool, sel Selection, dryRun bool) (Action, error) {
	return act(ctx, pool, operatorCommand{"purge", StateDead, purgeSelected}, sel, dryRun)
}

// operatorCommand is one of the commands that act on selected intents.
type operatorCommand struct {
	what  string // its name, in errors
	state State  // the state of the intents it acts on
	stmt  string // its statement over the selected intents
}

// act runs one operator command: its statement over the intents
// selectWhere picks in its state, or with dryRun selectWhere alone.
func act(ctx context.Context, pool *pgxpool.Pool, cmd operatorCommand, sel Selection, dryRun bool) (Action, error) {
	what, state, stmt := cmd.what, cmd.state, cmd.stmt
	res := Action{Changed: []int64{}, Skipped: map[int64]State{}, NotFound: []int64{}}
	if err := sel.validate(); err != nil {
		return res, fmt.Errorf("%s: %w", what, err)
	}
	q := adminQueries{db: pool}
	p := selectParams{Selection: sel, State: state}
	var changed []int64
	var err error
	if dryRun {
		changed, err = q.selectIntents(ctx, p)
	} else {
		changed, err = q.actOnSelected(ctx, stmt, p)
	}
	if err != nil {
		return res, fmt.Errorf("%s: %w", what, err)
	}
	res.Changed = changed
	if len(sel.IDs) == 0 {
		return res, nil
	}
	found, err := q.intentStates(ctx, sel.IDs)
	if err != nil {
		return res, fmt.Errorf("%s: %w", what, err)
	}
	sortOutSelected(&res, sel.IDs, found)
	return res, nil
}

// idState is an intent's id and state.
type idState struct {
	ID    int64 `db:"id"`
	State State `db:"state"`
}

// sortOutSelected files each id the operator named that res did not
// change: skipped in the state found, or not found.
func sortOutSelected(res *Action, ids []int64, found []idState) {
	changed := map[int64]bool{}
	for _, id := range res.Changed {
		changed[id] = true
	}
	states := map[int64]State{}
	for _, f := range found {
		states[f.ID] = f.State
	}
	for _, id := range ids {
		switch st, ok := states[id]; {
		case changed[id]:
		case !ok:
			res.NotFound = append(res.NotFound, id)
		default:
			res.Skipped[id] = st
		}
	}
}
