package migrations_test

import (
	"database/sql"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/migrations"
)

// A producer granted at an earlier version keeps inserting right after a
// migration that puts a new function on the insert's path, before anyone
// runs grant again: its inserts run in the application's own transactions,
// and an upgrade must not fail them in between.
func TestUpgradeKeepsProducersInserting(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dbURL := pgtest.NewEmptyDatabase(t)
	cfg, err := pgx.ParseConfig(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	db := stdlib.OpenDB(*cfg)
	t.Cleanup(func() { _ = db.Close() })

	// The schema at 00013, and a producer granted what it needed then.
	const before = 13
	if _, err := db.ExecContext(ctx, `CREATE SCHEMA outbox`); err != nil {
		t.Fatal(err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, migrations.FS(),
		goose.WithTableName(migrations.VersionTable), goose.WithDisableGlobalRegistry(true))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.UpTo(ctx, before); err != nil {
		t.Fatalf("migrate to %d: %v", before, err)
	}
	role, roleURL := pgtest.NewLoginRole(t, dbURL)
	stmts, err := migrations.GrantStatements(migrations.Producer, role)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range stmts {
		if exists(t, db, s) {
			if _, err := db.ExecContext(ctx, s); err != nil {
				t.Fatalf("%s: %v", s, err)
			}
		}
	}
	producer := pgtest.Pool(t, roleURL)
	insert := `INSERT INTO outbox.intents (key, payload) VALUES ($1, $2)`
	payload := `{"conversation": {"id": "order-1", "participants": ["u1"]},
	             "users": [{"id": "u1", "name": "Ann", "email": ["ann@example.com"]}],
	             "messages": [{"sender": "u1", "text": "Hello"}]}`
	if _, err := producer.Exec(ctx, insert, "before-upgrade", payload); err != nil {
		t.Fatalf("insert at %d: %v", before, err)
	}

	res, err := migrations.Up(ctx, dbURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Version <= before {
		t.Fatalf("Up left the schema at %d", res.Version)
	}
	if _, err := producer.Exec(ctx, insert, "after-upgrade", payload); err != nil {
		t.Fatalf("insert right after migrating %d -> %d, before grant: %v", before, res.Version, err)
	}
}

// exists reports whether the object a GRANT statement names exists yet.
func exists(t *testing.T, db *sql.DB, grant string) bool {
	t.Helper()
	on := grant[strings.Index(grant, " ON ")+len(" ON "):]
	kind, rest, _ := strings.Cut(on, " ")
	name, _, _ := strings.Cut(rest, " TO ")
	q := `SELECT to_regclass($1) IS NOT NULL`
	switch kind {
	case "FUNCTION":
		q = `SELECT to_regprocedure($1) IS NOT NULL`
	case "SCHEMA":
		q = `SELECT to_regnamespace($1) IS NOT NULL`
	}
	var ok bool
	if err := db.QueryRowContext(t.Context(), q, name).Scan(&ok); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return ok
}
