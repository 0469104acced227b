package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/outbox"
)

// connect opens a connection closed when t ends.
func connect(t *testing.T, dbURL string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), dbURL)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func TestEnqueueOptions(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewPool(t)
	ctx := t.Context()

	later := time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC)
	id, err := outbox.Enqueue(ctx, pool, simpleIntent("c1", "hi"), outbox.WithKey("order-1"), outbox.WithRunAfter(later))
	if err != nil {
		t.Fatal(err)
	}
	var (
		key      *string
		runAfter time.Time
		state    string
		convID   string
	)
	if err := pool.QueryRow(ctx, `SELECT key, run_after, state, conversation_id FROM outbox.intents WHERE id = $1`, id).
		Scan(&key, &runAfter, &state, &convID); err != nil {
		t.Fatal(err)
	}
	if key == nil || *key != "order-1" || !runAfter.Equal(later) || state != "pending" || convID != "c1" {
		t.Errorf("stored key=%v run_after=%v state=%q conversation_id=%q", key, runAfter, state, convID)
	}

	// Defaults: no key, due now.
	id, err = outbox.Enqueue(ctx, pool, simpleIntent("c2", "hi"))
	if err != nil {
		t.Fatal(err)
	}
	var due bool
	if err := pool.QueryRow(ctx, `SELECT key, run_after <= now() FROM outbox.intents WHERE id = $1`, id).Scan(&key, &due); err != nil {
		t.Fatal(err)
	}
	if key != nil || !due {
		t.Errorf("default key=%v due=%v, want no key, due now", key, due)
	}
}

func TestEnqueueInvalidKey(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		key  string
		rule string
	}{
		{"empty", "", "must be 1 to 256 characters"},
		{"too long", strings.Repeat("k", 257), "must be 1 to 256 characters"},
		{"NUL", "order\x001", "must not contain NUL characters"},
		{"invalid UTF-8", "order-\xff", "must be valid UTF-8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := outbox.Enqueue(t.Context(), noDB{t}, simpleIntent("c", "hi"), outbox.WithKey(tt.key))
			var ve *outbox.ValidationError
			if !errors.As(err, &ve) || ve.Field != "key" || ve.Rule != tt.rule {
				t.Fatalf("Enqueue() = %v, want key: %s", err, tt.rule)
			}
			if want := "invalid intent key: " + tt.rule; err.Error() != want {
				t.Errorf("Error() = %q, want %q", err.Error(), want)
			}
		})
	}

	// 256 characters (not bytes) is the limit, as in the database.
	t.Run("256 characters", func(t *testing.T) {
		t.Parallel()
		pool, _ := pgtest.NewPool(t)
		if _, err := outbox.Enqueue(t.Context(), pool, simpleIntent("c", "hi"), outbox.WithKey(strings.Repeat("é", 256))); err != nil {
			t.Fatal(err)
		}
		var pgErr *pgconn.PgError
		_, err := pool.Exec(t.Context(),
			`INSERT INTO outbox.intents (payload, key) VALUES ('{"conversation": {"id": "c"}}', '')`)
		if !errors.As(err, &pgErr) || pgErr.Code != "23514" || pgErr.ConstraintName != "intents_key_valid" {
			t.Errorf("empty key in SQL: %v, want 23514 on intents_key_valid", err)
		}
	})
}

// A retried application transaction fails on the duplicate key and leaves
// nothing of itself behind.
func TestEnqueueDuplicateKey(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewPool(t)
	ctx := t.Context()
	if _, err := pool.Exec(ctx, `CREATE TABLE orders (id text PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}

	first, err := outbox.Enqueue(ctx, pool, simpleIntent("order_1", "first"), outbox.WithKey("order-1"))
	if err != nil {
		t.Fatal(err)
	}

	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // after Commit a no-op; a failed test ends the transaction either way
	if _, err := tx.Exec(ctx, `INSERT INTO orders (id) VALUES ('order-1-retry')`); err != nil {
		t.Fatal(err)
	}
	_, err = outbox.Enqueue(ctx, tx, simpleIntent("order_1", "second"), outbox.WithKey("order-1"))
	if !errors.Is(err, outbox.ErrDuplicateKey) {
		t.Fatalf("Enqueue() = %v, want ErrDuplicateKey", err)
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "23505" {
		t.Errorf("error does not wrap the unique violation: %v", err)
	}
	if errors.Is(err, outbox.ErrInvalid) {
		t.Errorf("duplicate key reported as invalid: %v", err)
	}
	if err := tx.Commit(ctx); !errors.Is(err, pgx.ErrTxCommitRollback) {
		t.Errorf("Commit() = %v, want the aborted transaction rolled back", err)
	}

	if n := countRows(t, pool, `SELECT count(*) FROM orders`); n != 0 {
		t.Errorf("%d orders committed, want none", n)
	}
	var ids []int64
	if err := pool.QueryRow(ctx, `SELECT array_agg(id) FROM outbox.intents`).Scan(&ids); err != nil {
		t.Fatal(err)
	}
	if len(ids) != 1 || ids[0] != first {
		t.Errorf("intents = %v, want only %d", ids, first)
	}
	if got := storedIntent(t, pool, first); got.Messages[0].Text != "first" {
		t.Errorf("stored intent changed: %+v", got)
	}
}

// Should the database's rules ever be stricter than this package's (a newer
// migration, an older application), its refusal still comes back as a
// *ValidationError naming the field.
func TestEnqueueDatabaseRefusal(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewPool(t)
	ctx := t.Context()
	if _, err := pool.Exec(ctx, `
CREATE OR REPLACE FUNCTION outbox.validate_payload(p jsonb) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
BEGIN
    IF p #>> '{conversation,id}' = 'forbidden: yes' THEN
        RAISE EXCEPTION 'invalid intent payload: conversation.id: must not be forbidden: really'
            USING ERRCODE = 'check_violation', DETAIL = 'field: conversation.id',
                  CONSTRAINT = 'intents_payload_valid';
    END IF;
    RETURN true;
END
$$`); err != nil {
		t.Fatal(err)
	}
	// The insert trigger's fast path leaves every payload to the rules above.
	if _, err := pool.Exec(ctx, `
CREATE OR REPLACE FUNCTION outbox.payload_ok(p jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE RETURN false`); err != nil {
		t.Fatal(err)
	}

	for _, enqueue := range []func() error{
		func() error {
			_, err := outbox.Enqueue(ctx, pool, outbox.Intent{Conversation: outbox.Conversation{ID: "forbidden: yes"}})
			return err
		},
		func() error {
			_, err := outbox.EnqueueBatch(ctx, pool, []outbox.BatchItem{
				{Intent: outbox.Intent{Conversation: outbox.Conversation{ID: "fine"}}},
				{Intent: outbox.Intent{Conversation: outbox.Conversation{ID: "forbidden: yes"}}},
			})
			return err
		},
	} {
		err := enqueue()
		var ve *outbox.ValidationError
		if !errors.As(err, &ve) || ve.Field != "conversation.id" || ve.Rule != "must not be forbidden: really" {
			t.Fatalf("Enqueue() = %#v, want a ValidationError for conversation.id", err)
		}
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) {
			t.Errorf("ValidationError does not wrap the database error")
		}
		if !errors.Is(err, outbox.ErrInvalid) {
			t.Errorf("errors.Is(err, ErrInvalid) = false")
		}
	}
	if n := countRows(t, pool, `SELECT count(*) FROM outbox.intents`); n != 0 {
		t.Errorf("%d intents stored, want none", n)
	}
}

func TestEnqueueOtherErrorsWrapped(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	pool, _ := pgtest.NewPool(t)
	_, err := outbox.Enqueue(ctx, pool, simpleIntent("c", "hi"))
	if err == nil || !strings.HasPrefix(err.Error(), "outbox: enqueue: ") || !errors.Is(err, context.Canceled) {
		t.Errorf("Enqueue(canceled) = %v, want a wrapped context.Canceled", err)
	}
	if errors.Is(err, outbox.ErrInvalid) || errors.Is(err, outbox.ErrDuplicateKey) {
		t.Errorf("misclassified: %v", err)
	}
}

func batchItems(n int, conv func(i int) string) []outbox.BatchItem {
	items := make([]outbox.BatchItem, n)
	for i := range items {
		items[i] = outbox.BatchItem{Intent: simpleIntent(conv(i), fmt.Sprintf("message %d", i))}
	}
	return items
}

func TestEnqueueBatch(t *testing.T) {
	t.Parallel()
	pool, dbURL := pgtest.NewPool(t)
	ctx := t.Context()

	// Interleaved conversations, keys on some, a delay on one.
	items := batchItems(30, func(i int) string { return fmt.Sprintf("conv-%d", i%4) })
	later := time.Date(2031, 1, 2, 3, 4, 5, 0, time.UTC)
	items[3].Key = "key-3"
	items[7].Key = "key-7"
	items[9].RunAfter = later

	tx, err := connect(t, dbURL).Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // after Commit a no-op; a failed test ends the transaction either way
	ids, err := outbox.EnqueueBatch(ctx, tx, items)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if len(ids) != len(items) {
		t.Fatalf("got %d ids for %d items", len(ids), len(items))
	}
	for i, id := range ids {
		if i > 0 && id <= ids[i-1] {
			t.Errorf("ids not increasing in slice order: %v", ids)
			break
		}
		var (
			key      *string
			runAfter time.Time
		)
		if err := pool.QueryRow(ctx, `SELECT key, run_after FROM outbox.intents WHERE id = $1`, id).Scan(&key, &runAfter); err != nil {
			t.Fatal(err)
		}
		got := storedIntent(t, pool, id)
		if want := items[i].Intent; got.Conversation.ID != want.Conversation.ID || got.Messages[0].Text != want.Messages[0].Text {
			t.Errorf("id %d (item %d) holds %q/%q, want %q/%q", id, i,
				got.Conversation.ID, got.Messages[0].Text, want.Conversation.ID, want.Messages[0].Text)
		}
		if (key != nil) != (items[i].Key != "") || key != nil && *key != items[i].Key {
			t.Errorf("item %d: key = %v, want %q", i, key, items[i].Key)
		}
		if i == 9 && !runAfter.Equal(later) {
			t.Errorf("item 9: run_after = %v, want %v", runAfter, later)
		}
	}

	// Through a pool and a connection too.
	for _, db := range []outbox.DB{pool, connect(t, dbURL)} {
		ids, err := outbox.EnqueueBatch(ctx, db, batchItems(3, func(i int) string { return "more" }))
		if err != nil || len(ids) != 3 || ids[0] >= ids[1] || ids[1] >= ids[2] {
			t.Errorf("EnqueueBatch() = %v, %v", ids, err)
		}
	}
}

func TestEnqueueBatchRefusesInvalidItem(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		modify func(items []outbox.BatchItem)
		index  int
		field  string
	}{
		{"payload", func(items []outbox.BatchItem) { items[3].Intent.Conversation.ID = "" }, 3, "conversation.id"},
		{"user", func(items []outbox.BatchItem) { items[5].Intent.Users[1].Email = []string{} }, 5, "users[1].email"},
		{"key", func(items []outbox.BatchItem) { items[2].Key = strings.Repeat("k", 300) }, 2, "key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			items := batchItems(6, func(i int) string { return fmt.Sprint("c", i) })
			tt.modify(items)
			ids, err := outbox.EnqueueBatch(t.Context(), noDB{t}, items)
			if ids != nil {
				t.Errorf("ids = %v, want nil", ids)
			}
			var be *outbox.BatchError
			if !errors.As(err, &be) || be.Index != tt.index {
				t.Fatalf("EnqueueBatch() = %v, want a BatchError for item %d", err, tt.index)
			}
			var ve *outbox.ValidationError
			if !errors.As(err, &ve) || ve.Field != tt.field {
				t.Errorf("EnqueueBatch() = %v, want a ValidationError for %q", err, tt.field)
			}
			if !errors.Is(err, outbox.ErrInvalid) {
				t.Errorf("errors.Is(err, ErrInvalid) = false")
			}
		})
	}

	t.Run("empty", func(t *testing.T) {
		t.Parallel()
		ids, err := outbox.EnqueueBatch(t.Context(), noDB{t}, nil)
		if ids != nil || err != nil {
			t.Errorf("EnqueueBatch(nil) = %v, %v, want nil, nil", ids, err)
		}
	})
}

// A duplicate key anywhere in a batch (with a stored intent or within the
// batch) inserts none of it.
func TestEnqueueBatchDuplicateKey(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewPool(t)
	ctx := t.Context()
	if _, err := outbox.Enqueue(ctx, pool, simpleIntent("c", "hi"), outbox.WithKey("taken")); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		keys []string
	}{
		{"with a stored intent", []string{"a", "", "taken"}},
		{"within the batch", []string{"a", "b", "a"}},
	}
	for _, tt := range tests {
		items := batchItems(len(tt.keys), func(i int) string { return fmt.Sprint("c", i) })
		for i, k := range tt.keys {
			items[i].Key = k
		}
		_, err := outbox.EnqueueBatch(ctx, pool, items)
		if !errors.Is(err, outbox.ErrDuplicateKey) {
			t.Errorf("%s: EnqueueBatch() = %v, want ErrDuplicateKey", tt.name, err)
		}
	}
	if n := countRows(t, pool, `SELECT count(*) FROM outbox.intents`); n != 1 {
		t.Errorf("%d intents stored, want only the first", n)
	}
}
