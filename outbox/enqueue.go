package outbox

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// DB is what Enqueue needs from the database: pgx.Tx, *pgxpool.Pool and
// *pgx.Conn all satisfy it. Pass the application's transaction so the
// intent commits or rolls back with the application's own writes.
type DB interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// ErrDuplicateKey matches the error Enqueue and EnqueueBatch return when an
// intent with the same idempotency key already exists: the application's
// transaction has failed and must be rolled back, and the intent it retried
// is already queued.
var ErrDuplicateKey = errors.New("duplicate idempotency key")

// EnqueueOption configures one Enqueue call.
type EnqueueOption func(*enqueueOptions)

type enqueueOptions struct {
	key      *string
	runAfter time.Time
}

// WithKey sets the intent's idempotency key (1 to MaxKeyLength characters),
// such as "order-123". A second intent with the same key is refused with
// ErrDuplicateKey, so a retried application transaction cannot start the
// same conversation twice. An empty key is invalid, not "no key".
func WithKey(key string) EnqueueOption {
	return func(o *enqueueOptions) { o.key = &key }
}

// WithRunAfter delays delivery until t. The zero time means now.
func WithRunAfter(t time.Time) EnqueueOption {
	return func(o *enqueueOptions) { o.runAfter = t }
}

// BatchItem is one intent of EnqueueBatch.
type BatchItem struct {
	// Intent is the conversation start to deliver.
	Intent Intent
	// Key is the optional idempotency key; empty means none.
	Key string
	// RunAfter delays delivery until then; the zero time means now.
	RunAfter time.Time
}

// BatchError reports which item of EnqueueBatch is invalid. Err is a
// *ValidationError, reachable with errors.As.
type BatchError struct {
	// Index is the item's position in the slice passed to EnqueueBatch.
	Index int
	// Err is what is wrong with it.
	Err error
}

// Error returns "outbox: batch item <index>: <err>".
func (e *BatchError) Error() string {
	return fmt.Sprintf("outbox: batch item %d: %v", e.Index, e.Err)
}

// Unwrap returns Err.
func (e *BatchError) Unwrap() error { return e.Err }

// The before-insert trigger takes the conversation's advisory lock and then
// assigns the id, so ids follow insertion order within a statement and
// commit order within a conversation. run_after is NULL for "now".
const (
	enqueueSQL = `
INSERT INTO outbox.intents (payload, key, run_after)
VALUES ($1, $2, coalesce($3::timestamptz, now()))
RETURNING id`

	// Rows are inserted in ordinality order, so the ids, sorted, are the
	// items' ids in slice order.
	enqueueBatchSQL = `
WITH inserted AS (
    INSERT INTO outbox.intents (payload, key, run_after)
    SELECT item.payload, item.key, coalesce(item.run_after, now())
      FROM unnest($1::jsonb[], $2::text[], $3::timestamptz[]) WITH ORDINALITY
           AS item (payload, key, run_after, ord)
     ORDER BY item.ord
    RETURNING id
)
SELECT array_agg(id ORDER BY id) FROM inserted`
)

// Enqueue validates intent and inserts it into outbox.intents through db,
// returning its id. Pass the application's transaction as db so the intent
// is delivered only if that transaction commits.
//
// An invalid intent or key is refused with a *ValidationError before any
// query is sent. A duplicate key fails with an error matching
// ErrDuplicateKey (wrapping the *pgconn.PgError); the transaction is then
// aborted and must be rolled back. Any other failure is returned wrapped.
//
// Within a conversation, intents are delivered in the order their
// transactions commit: the insert waits while another open transaction has
// inserted an intent for the same conversation.
func Enqueue(ctx context.Context, db DB, intent Intent, opts ...EnqueueOption) (int64, error) {
	var o enqueueOptions
	for _, opt := range opts {
		opt(&o)
	}
	if o.key != nil {
		if err := checkKey(*o.key); err != nil {
			return 0, err
		}
	}
	payload, err := intent.encode()
	if err != nil {
		return 0, err
	}
	var runAfter *time.Time
	if !o.runAfter.IsZero() {
		runAfter = &o.runAfter
	}
	var id int64
	if err := db.QueryRow(ctx, enqueueSQL, payload, o.key, runAfter).Scan(&id); err != nil {
		return 0, insertError("enqueue", err)
	}
	return id, nil
}

// EnqueueBatch validates every item, then inserts them all in one
// statement (one round trip), in slice order, and returns their ids in
// slice order. The ids increase in slice order, so items for the same
// conversation are delivered in slice order.
//
// An invalid item is refused with a *BatchError naming its index (wrapping
// a *ValidationError) before any query is sent, and nothing is inserted. A
// duplicate key, with an existing intent or within the batch, fails the
// whole statement with an error matching ErrDuplicateKey. An empty batch
// returns nil without a query.
//
// Each conversation in the batch holds its order lock until the
// transaction ends; two transactions enqueueing the same conversations in
// opposite orders can deadlock (Postgres then aborts one of them).
func EnqueueBatch(ctx context.Context, db DB, items []BatchItem) ([]int64, error) {
	if len(items) == 0 {
		return nil, nil
	}
	payloads := make([][]byte, len(items))
	keys := make([]*string, len(items))
	runAfters := make([]*time.Time, len(items))
	for i := range items {
		item := &items[i]
		if item.Key != "" {
			if err := checkKey(item.Key); err != nil {
				return nil, &BatchError{Index: i, Err: err}
			}
			key := item.Key
			keys[i] = &key
		}
		payload, err := item.Intent.encode()
		if err != nil {
			return nil, &BatchError{Index: i, Err: err}
		}
		payloads[i] = payload
		if !item.RunAfter.IsZero() {
			t := item.RunAfter
			runAfters[i] = &t
		}
	}
	var ids []int64
	if err := db.QueryRow(ctx, enqueueBatchSQL, payloads, keys, runAfters).Scan(&ids); err != nil {
		return nil, insertError("enqueue batch", err)
	}
	if len(ids) != len(items) {
		return nil, fmt.Errorf("outbox: enqueue batch: inserted %d intents for %d items", len(ids), len(items))
	}
	return ids, nil
}

// Names the schema gives the errors Enqueue recognises.
const (
	codeUniqueViolation = "23505"
	codeCheckViolation  = "23514"
	keyUniqueConstraint = "intents_key_key"
	keyValidConstraint  = "intents_key_valid"
	payloadConstraint   = "intents_payload_valid"
	payloadErrorPrefix  = "invalid intent payload: "
	payloadFieldPrefix  = "field: "
)

// insertError classifies a failed insert: a duplicate key, a payload or key
// the database refused (when its rules are newer than this package's), or
// anything else.
func insertError(op string, err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code == codeUniqueViolation && pgErr.ConstraintName == keyUniqueConstraint:
			return fmt.Errorf("outbox: %s: %w: %w", op, ErrDuplicateKey, err)
		case pgErr.Code == codeCheckViolation && pgErr.ConstraintName == payloadConstraint:
			field, ok := strings.CutPrefix(pgErr.Detail, payloadFieldPrefix)
			if !ok {
				field = ""
			}
			rule := strings.TrimPrefix(pgErr.Message, payloadErrorPrefix)
			if field != "" {
				rule = strings.TrimPrefix(rule, field+": ")
			}
			return &ValidationError{Field: field, Rule: rule, err: err}
		case pgErr.Code == codeCheckViolation && pgErr.ConstraintName == keyValidConstraint:
			return &ValidationError{Field: "key", Rule: ruleKeySize, isKey: true, err: err}
		}
	}
	return fmt.Errorf("outbox: %s: %w", op, err)
}
