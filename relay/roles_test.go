package relay_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/migrations"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
	"github.com/outbox-relay/outbox-relay/relay"
)

// Retention, which `outbox-relay run` applies only every ten minutes,
// works with the relay role's privileges: it deletes old done intents,
// their attempts and stale user syncs.
func TestRetentionAsRelayRole(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	ctx := context.Background()
	role, roleURL := pgtest.NewLoginRole(t, b.dbURL)
	if _, err := migrations.Grant(ctx, b.dbURL, migrations.Relay, role); err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.New(ctx, roleURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)

	ids := b.insertSQL(t, []outbox.Intent{orderIntent("old", 1), orderIntent("pending", 2)})
	for _, stmt := range []string{
		`UPDATE outbox.intents SET state = 'done', done_at = now() - interval '2 days' WHERE id = $1`,
		`INSERT INTO outbox.attempts (intent_id, attempt, step, target, outcome, duration_ms, relay, started_at)
		 VALUES ($1, 1, 'user', 'u', 'ok', 1, 'r', now())`,
		`INSERT INTO outbox.synced_users (app_id, user_id, content_hash, synced_at) VALUES ('', 'stale' || $1::bigint, '\x00', now() - interval '2 days')`,
	} {
		if _, err := b.pool.Exec(ctx, stmt, ids[0]); err != nil {
			t.Fatal(err)
		}
	}
	cfg := withLogs(testConfig("cleaner"), b)
	cfg.Retention = 24 * time.Hour
	r, err := relay.New(pool, b.client(t, testSecret), cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.CleanUp(ctx)
	var intents, attempts, syncs int
	if err := b.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM outbox.intents), (SELECT count(*) FROM outbox.attempts),
	        (SELECT count(*) FROM outbox.synced_users)`).Scan(&intents, &attempts, &syncs); err != nil {
		t.Fatal(err)
	}
	if intents != 1 || attempts != 0 || syncs != 0 {
		t.Errorf("left %d intents, %d attempts, %d synced users; want 1, 0, 0\nlogs:\n%s", intents, attempts, syncs, b.logs.String())
	}
}
