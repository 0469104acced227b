package outbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/outbox"
)

// The Example functions connect to DATABASE_URL, as an application does:
// a fresh migrated database with the orders table they write to.
func TestMain(m *testing.M) {
	pgtest.MainWithDatabase(m, `CREATE TABLE orders (id text PRIMARY KEY, buyer text NOT NULL, seller text NOT NULL)`)
}

// Everything an application may pass as the DB.
var (
	_ outbox.DB = pgx.Tx(nil)
	_ outbox.DB = (*pgxpool.Pool)(nil)
	_ outbox.DB = (*pgx.Conn)(nil)
)

// noDB is an outbox.DB that fails the test when it is used: proof that a
// call was decided without a round trip.
type noDB struct{ t *testing.T }

func (d noDB) QueryRow(context.Context, string, ...any) pgx.Row {
	d.t.Helper()
	d.t.Error("unexpected query: the call should have been refused before touching the database")
	return errRow{}
}

type errRow struct{}

func (errRow) Scan(...any) error { return errors.New("noDB: no database") }

// insertRaw inserts payload with plain SQL, as an application in another
// language would, and returns the id or the Postgres error.
func insertRaw(t *testing.T, db outbox.DB, payload string) (int64, *pgconn.PgError) {
	t.Helper()
	var id int64
	err := db.QueryRow(t.Context(),
		`INSERT INTO outbox.intents (payload) VALUES ($1::jsonb) RETURNING id`, payload).Scan(&id)
	if err == nil {
		return id, nil
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		t.Fatalf("insert: %v", err)
	}
	return 0, pgErr
}

// storedIntent reads back the payload of intent id.
func storedIntent(t *testing.T, db outbox.DB, id int64) outbox.Intent {
	t.Helper()
	var payload []byte
	if err := db.QueryRow(t.Context(),
		`SELECT payload FROM outbox.intents WHERE id = $1`, id).Scan(&payload); err != nil {
		t.Fatalf("read intent %d: %v", id, err)
	}
	var in outbox.Intent
	if err := json.Unmarshal(payload, &in); err != nil {
		t.Fatalf("decode intent %d: %v", id, err)
	}
	return in
}

func countRows(t *testing.T, db outbox.DB, query string) int {
	t.Helper()
	var n int
	if err := db.QueryRow(t.Context(), query).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

// simpleIntent is a valid intent for conversation conv.
func simpleIntent(conv, text string) outbox.Intent {
	return outbox.Intent{
		Users: []outbox.User{
			{ID: "buyer", Name: "Alice", Email: []string{"alice@example.com"}},
			{ID: "seller", Name: "Bob", Email: []string{"bob@example.com"}},
		},
		Conversation: outbox.Conversation{ID: conv, Subject: "Order " + conv},
		Messages:     []outbox.Message{{Sender: "buyer", Text: text}},
	}
}
