package relay_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/migrations"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
	"github.com/outbox-relay/outbox-relay/relay"
)

// Retention works with the relay role's privileges: it deletes old done
// intents, their attempts and stale user syncs, retires keys and forgets
// silent relays.
func TestRetentionAsRelayRole(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	ctx := t.Context()
	role, roleURL := pgtest.NewLoginRole(t, b.dbURL)
	if _, err := migrations.Grant(ctx, b.dbURL, migrations.Relay, role); err != nil {
		t.Fatal(err)
	}
	pool := pgtest.Pool(t, roleURL)

	ids := b.insertSQL(t, []outbox.Intent{orderIntent("old", 1), orderIntent("pending", 2)})
	for _, stmt := range []string{
		`UPDATE outbox.intents SET state = 'done', done_at = now() - interval '2 days' WHERE id = $1`,
		`INSERT INTO outbox.attempts (intent_id, attempt, step, target, outcome, duration_ms, relay, started_at)
		 VALUES ($1, 1, 'user', 'u', 'ok', 1, 'r', now())`,
		`INSERT INTO outbox.synced_users (app_id, user_id, content_hash, synced_at) VALUES ('', 'stale' || $1::bigint, '\x00', now() - interval '2 days')`,
		`UPDATE outbox.intents SET key = 'order-' || $1::bigint WHERE id = $1`,
		`INSERT INTO outbox.relays (id, heartbeat_at) VALUES ('crashed' || $1::bigint, now() - interval '1 hour')`,
	} {
		if _, err := b.pool.Exec(ctx, stmt, ids[0]); err != nil {
			t.Fatal(err)
		}
	}
	cfg := withLogs(testConfig("cleaner"), b)
	cfg.Retention = relay.RetentionConfig{Done: 24 * time.Hour}
	r, err := relay.New(pool, b.client(t, testSecret), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.RetainOnce(ctx); err != nil {
		t.Fatal(err)
	}
	var intents, attempts, syncs, keys, relays int
	if err := b.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM outbox.intents), (SELECT count(*) FROM outbox.attempts),
	        (SELECT count(*) FROM outbox.synced_users), (SELECT count(*) FROM outbox.retired_keys),
	        (SELECT count(*) FROM outbox.relays)`).Scan(&intents, &attempts, &syncs, &keys, &relays); err != nil {
		t.Fatal(err)
	}
	if intents != 1 || attempts != 0 || syncs != 0 || keys != 1 || relays != 0 {
		t.Errorf("left %d intents, %d attempts, %d synced users, %d retired keys, %d relays; want 1, 0, 0, 1, 0\nlogs:\n%s",
			intents, attempts, syncs, keys, relays, b.logs.String())
	}

	// A producer, who may not read retired keys, is refused one as a
	// duplicate.
	producer, producerURL := pgtest.NewLoginRole(t, b.dbURL)
	if _, err := migrations.Grant(ctx, b.dbURL, migrations.Producer, producer); err != nil {
		t.Fatal(err)
	}
	ppool := pgtest.Pool(t, producerURL)
	_, err = outbox.Enqueue(ctx, ppool, outbox.Intent{Conversation: outbox.Conversation{ID: "again"}}, outbox.WithKey(fmt.Sprint("order-", ids[0])))
	if !errors.Is(err, outbox.ErrDuplicateKey) {
		t.Errorf("producer role enqueueing a retired key: %v, want ErrDuplicateKey", err)
	}
}
