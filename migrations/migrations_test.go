package migrations_test

import (
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/migrations"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// Three relays starting at once on an empty database: exactly one applies
// the migrations, none fails, and the schema ends complete.
func TestUpConcurrentStarts(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.NewEmptyDatabase(t)
	ctx := t.Context()

	const starts = 3
	var wg sync.WaitGroup
	results := make([]migrations.Result, starts)
	errs := make([]error, starts)
	for i := range starts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = migrations.Up(ctx, dbURL, nil)
		}()
	}
	wg.Wait()

	applied := 0
	for i := range starts {
		if errs[i] != nil {
			t.Fatalf("start %d: %v", i, errs[i])
		}
		if len(results[i].Applied) > 0 {
			applied++
		}
		if results[i].Version == 0 {
			t.Errorf("start %d: version 0 after Up", i)
		}
	}
	if applied != 1 {
		t.Errorf("migrations applied by %d starts, want exactly 1", applied)
	}

	// Idempotent: a fourth run applies nothing.
	res, err := migrations.Up(ctx, dbURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Applied) != 0 {
		t.Errorf("second Up applied %v, want nothing", res.Applied)
	}

	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var versionTableSchema string
	if err := conn.QueryRow(ctx,
		`SELECT schemaname FROM pg_tables WHERE tablename = 'goose_db_version'`).Scan(&versionTableSchema); err != nil {
		t.Fatal(err)
	}
	if versionTableSchema != "outbox" {
		t.Errorf("goose version table in schema %q, want outbox", versionTableSchema)
	}
	var wakeupRows int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM outbox.wakeup`).Scan(&wakeupRows); err != nil {
		t.Fatal(err)
	}
	if wakeupRows != 1 {
		t.Errorf("wakeup rows = %d, want 1", wakeupRows)
	}
}
