package relay_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
	"github.com/outbox-relay/outbox-relay/relay"
)

// retentionRelay returns a relay, not started, whose RetainOnce applies cfg.
func retentionRelay(t *testing.T, b *bundle, cfg relay.RetentionConfig) *relay.Relay {
	t.Helper()
	rc := testConfig("cleaner")
	rc.AppID = "app"
	rc.Retention = cfg
	r, err := relay.New(b.pool, b.client(t, testSecret), withLogs(rc, b))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (b *bundle) exec(t *testing.T, sql string, args ...any) {
	t.Helper()
	if _, err := b.pool.Exec(t.Context(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func (b *bundle) count(t *testing.T, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := b.pool.QueryRow(t.Context(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// insertKeyed inserts one intent with an idempotency key and returns its id.
func (b *bundle) insertKeyed(t *testing.T, key, conv string) int64 {
	t.Helper()
	var id int64
	if err := b.pool.QueryRow(t.Context(),
		`INSERT INTO outbox.intents (payload, key) VALUES (jsonb_build_object('conversation', jsonb_build_object('id', $2::text)), $1) RETURNING id`,
		key, conv).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

// markDone makes an intent done, ago before now.
func (b *bundle) markDone(t *testing.T, id int64, ago string) {
	t.Helper()
	b.exec(t, `UPDATE outbox.intents SET state = 'done', done_at = now() - $2::interval WHERE id = $1`, id, ago)
}

// Retention deletes done intents older than it, with their attempts, and
// retires their keys; it keeps recent, pending and dead intents. It also
// forgets relays long silent and user syncs past their window.
func TestRetentionDeletesOldDoneIntents(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	ctx := t.Context()
	ids := b.insertSQL(t, []outbox.Intent{orderIntent("old", 1), orderIntent("recent", 2), orderIntent("dead", 3), orderIntent("pending", 4)})
	keyed := b.insertKeyed(t, "order-old", "old-keyed")
	b.markDone(t, ids[0], "2 days")
	b.markDone(t, keyed, "2 days")
	b.markDone(t, ids[1], "1 hour")
	b.exec(t, `UPDATE outbox.intents SET state = 'dead', updated_at = now() - interval '9 days' WHERE id = $1`, ids[2])
	b.exec(t, `INSERT INTO outbox.attempts (intent_id, attempt, step, target, outcome, duration_ms, relay, started_at)
		  SELECT id, 1, 'user', 'u', 'ok', 1, 'r', now() FROM outbox.intents`)
	b.exec(t, `INSERT INTO outbox.relays (id, heartbeat_at) VALUES ('crashed', now() - interval '1 hour'), ('recent', now() - interval '30 seconds')`)
	b.exec(t, `INSERT INTO outbox.synced_users (app_id, user_id, content_hash, synced_at)
		VALUES ('app', 'stale', '\x00', now() - interval '2 hours'), ('app', 'fresh', '\x00', now())`)

	r := retentionRelay(t, b, relay.RetentionConfig{Done: 24 * time.Hour})
	run, err := r.RetainOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := relay.RetentionRun{Intents: 2, Syncs: 1, Relays: 1}
	if run != want {
		t.Errorf("run = %+v, want %+v", run, want)
	}
	rows, _ := b.pool.Query(ctx, `SELECT id FROM outbox.intents ORDER BY id`)
	left, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(left) != fmt.Sprint(ids[1:]) {
		t.Errorf("intents left %v, want %v (only the old done ones deleted)", left, ids[1:])
	}
	if n := b.count(t, `SELECT count(*) FROM outbox.attempts WHERE intent_id IN ($1, $2)`, ids[0], keyed); n != 0 {
		t.Errorf("%d attempts of the deleted intents remain", n)
	}
	if n := b.count(t, `SELECT count(*) FROM outbox.attempts`); n != 3 {
		t.Errorf("%d attempts left, want the 3 of the kept intents", n)
	}
	if n := b.count(t, `SELECT count(*) FROM outbox.retired_keys WHERE key = 'order-old' AND intent_id = $1`, keyed); n != 1 {
		t.Errorf("the deleted intent's key was not retired")
	}
	rows, _ = b.pool.Query(ctx, `SELECT id FROM outbox.relays ORDER BY id`)
	if relays, _ := pgx.CollectRows(rows, pgx.RowTo[string]); fmt.Sprint(relays) != "[recent]" {
		t.Errorf("relays left %v, want [recent]", relays)
	}
	rows, _ = b.pool.Query(ctx, `SELECT user_id FROM outbox.synced_users ORDER BY user_id`)
	if users, _ := pgx.CollectRows(rows, pgx.RowTo[string]); fmt.Sprint(users) != "[fresh]" {
		t.Errorf("synced users left %v, want [fresh]", users)
	}
}

// A run deletes at most MaxPerRun rows, BatchSize per statement; the rest
// waits for the next run.
func TestRetentionRunIsBounded(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	ctx := t.Context()
	b.exec(t, `INSERT INTO outbox.intents (payload, state, done_at)
		SELECT '{"conversation": {"id": "history"}}', 'done', now() - interval '2 days' FROM generate_series(1, 25)`)
	r := retentionRelay(t, b, relay.RetentionConfig{Done: time.Hour, BatchSize: 4, MaxPerRun: 15, Pause: time.Millisecond})
	for i, want := range []int64{15, 10, 0} {
		run, err := r.RetainOnce(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if run.Intents != want {
			t.Errorf("run %d deleted %d intents, want %d", i+1, run.Intents, want)
		}
	}
}

// The retention scan reads the done_at index, not the table.
func TestRetentionUsesDoneAtIndex(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	ctx := t.Context()
	b.exec(t, `INSERT INTO outbox.intents (payload, state, done_at)
		SELECT '{"conversation": {"id": "history"}}', 'done', now() - interval '2 days' FROM generate_series(1, 5000)`)
	b.exec(t, `ANALYZE outbox.intents`)
	var plan string
	err := pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `EXPLAIN `+relay.DeleteDoneSQL, pgx.QueryExecModeSimpleProtocol, time.Hour, 1000)
		if err != nil {
			return err
		}
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		plan = fmt.Sprint(lines)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(plan, "intents_done_at_idx") {
		t.Errorf("retention does not scan intents_done_at_idx:\n%s", plan)
	}
}

// checkDuplicateKey fails unless err is the unique violation Postgres
// raises for a live duplicate key.
func checkDuplicateKey(t *testing.T, err error, key string) {
	t.Helper()
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		t.Fatalf("insert with retired key %q: err = %v, want a unique violation", key, err)
	}
	if pgErr.Code != "23505" || pgErr.ConstraintName != "intents_key_key" ||
		pgErr.TableName != "intents" || pgErr.SchemaName != "outbox" ||
		pgErr.Message != `duplicate key value violates unique constraint "intents_key_key"` ||
		pgErr.Detail != fmt.Sprintf("Key (key)=(%s) already exists.", key) {
		t.Errorf("insert with retired key: code %s constraint %q table %q schema %q message %q detail %q; want Postgres's unique violation on intents_key_key",
			pgErr.Code, pgErr.ConstraintName, pgErr.TableName, pgErr.SchemaName, pgErr.Message, pgErr.Detail)
	}
}

// A key stays taken after retention deleted its intent: SQL and Enqueue see
// the error a live duplicate gets, until the key's own horizon passes.
func TestRetiredKeyIsRefused(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	ctx := t.Context()
	const key = "order-123"
	b.markDone(t, b.insertKeyed(t, key, "c-123"), "2 days")
	// A live duplicate, for comparison.
	_, live := b.pool.Exec(ctx, `INSERT INTO outbox.intents (payload, key) VALUES ('{"conversation": {"id": "c"}}', $1)`, key)
	checkDuplicateKey(t, live, key)

	r := retentionRelay(t, b, relay.RetentionConfig{Done: 24 * time.Hour})
	if run, err := r.RetainOnce(ctx); err != nil || run.Intents != 1 {
		t.Fatalf("retention: %+v, %v; want 1 intent deleted", run, err)
	}
	_, err := b.pool.Exec(ctx, `INSERT INTO outbox.intents (payload, key) VALUES ('{"conversation": {"id": "c"}}', $1)`, key)
	checkDuplicateKey(t, err, key)
	_, err = outbox.Enqueue(ctx, b.pool, outbox.Intent{Conversation: outbox.Conversation{ID: "c"}}, outbox.WithKey(key))
	if !errors.Is(err, outbox.ErrDuplicateKey) {
		t.Errorf("Enqueue with a retired key: %v, want ErrDuplicateKey", err)
	}
	_, err = outbox.EnqueueBatch(ctx, b.pool, []outbox.BatchItem{{Intent: outbox.Intent{Conversation: outbox.Conversation{ID: "c"}}, Key: key}})
	if !errors.Is(err, outbox.ErrDuplicateKey) {
		t.Errorf("EnqueueBatch with a retired key: %v, want ErrDuplicateKey", err)
	}
	// Nor can an existing intent take the key.
	other := b.insertKeyed(t, "other", "c-other")
	_, err = b.pool.Exec(ctx, `UPDATE outbox.intents SET key = $1 WHERE id = $2`, key, other)
	checkDuplicateKey(t, err, key)

	// Past the key's horizon it is free again.
	b.exec(t, `UPDATE outbox.retired_keys SET retired_at = now() - interval '31 days'`)
	if run, err := r.RetainOnce(ctx); err != nil || run.Keys != 1 {
		t.Fatalf("retention: %+v, %v; want 1 key forgotten", run, err)
	}
	if _, err := outbox.Enqueue(ctx, b.pool, outbox.Intent{Conversation: outbox.Conversation{ID: "c"}}, outbox.WithKey(key)); err != nil {
		t.Errorf("Enqueue after the key's horizon: %v", err)
	}
}

// A producer inserting key K while retention deletes the intent holding K
// is refused, whatever its isolation level and whichever commits first.
// Two connections make the interleaving deterministic.
func TestRetiredKeyRace(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		isolation pgx.TxIsoLevel
		// Retention commits before the producer inserts (else while the
		// producer's insert waits on the unique index).
		retireFirst bool
	}{
		{"read committed, insert waits for retention", pgx.ReadCommitted, false},
		{"repeatable read, insert waits for retention", pgx.RepeatableRead, false},
		{"repeatable read, snapshot older than retention", pgx.RepeatableRead, true},
		{"serializable, snapshot older than retention", pgx.Serializable, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, faketalkjs.Faults{})
			ctx := t.Context()
			const key = "order-race"
			b.markDone(t, b.insertKeyed(t, key, "race"), "2 days")

			retention, err := pgx.Connect(ctx, b.dbURL)
			if err != nil {
				t.Fatal(err)
			}
			defer retention.Close(ctx)
			producer, err := pgx.Connect(ctx, b.dbURL)
			if err != nil {
				t.Fatal(err)
			}
			defer producer.Close(ctx)

			ptx, err := producer.BeginTx(ctx, pgx.TxOptions{IsoLevel: tc.isolation})
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = ptx.Rollback(ctx) }()
			var n int // takes the producer's snapshot
			if err := ptx.QueryRow(ctx, `SELECT count(*) FROM outbox.intents`).Scan(&n); err != nil {
				t.Fatal(err)
			}
			rtx, err := retention.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := rtx.QueryRow(ctx, relay.DeleteDoneSQL, time.Hour, 100).Scan(&n); err != nil || n != 1 {
				t.Fatalf("retention deleted %d, %v; want 1", n, err)
			}
			if tc.retireFirst {
				if err := rtx.Commit(ctx); err != nil {
					t.Fatal(err)
				}
			}
			inserted := make(chan error, 1)
			go func() {
				_, err := ptx.Exec(ctx, `INSERT INTO outbox.intents (payload, key) VALUES ('{"conversation": {"id": "c"}}', $1)`, key)
				inserted <- err
			}()
			if !tc.retireFirst {
				pid := producer.PgConn().PID()
				waitFor(t, 10*time.Second, "the producer's insert to wait for retention", func() bool {
					return b.count(t, `SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'`, pid) == 1
				})
				if err := rtx.Commit(ctx); err != nil {
					t.Fatal(err)
				}
			}
			select {
			case err := <-inserted:
				checkDuplicateKey(t, err, key)
			case <-time.After(10 * time.Second):
				t.Fatal("the producer's insert never returned")
			}
		})
	}
}

// gripProvider holds the first conversation PUT until released, ignoring
// the call's deadline, so a delivery stays in flight (and its lease must be
// renewed) for as long as a test needs. Later calls pass straight through.
type gripProvider struct {
	provider.Provider
	gripped atomic.Bool
	entered chan struct{}
	release chan struct{}
	once    sync.Once
}

func newGrip(p provider.Provider) *gripProvider {
	return &gripProvider{Provider: p, entered: make(chan struct{}), release: make(chan struct{})}
}

func (g *gripProvider) PutConversation(ctx context.Context, c provider.Conversation) error {
	if g.gripped.CompareAndSwap(false, true) {
		close(g.entered)
		<-g.release
		ctx = context.WithoutCancel(ctx)
	}
	return g.Provider.PutConversation(ctx, c)
}

func (g *gripProvider) let() { g.once.Do(func() { close(g.release) }) }

// Retention of a large history never delays lease renewal: while a relay
// deletes 100,000 done intents (and their attempts and keys) at the
// default pace, which takes several leases, a delivery it holds under a
// 4 s lease keeps its lease. Another relay sweeping for expired leases
// never takes it over, and its messages are posted once.
func TestRetentionNeverDelaysRenewals(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	ctx := t.Context()
	const history = 100_000
	b.exec(t, `INSERT INTO outbox.intents (payload, key, state, done_at)
		SELECT '{"conversation": {"id": "history"}}', 'history-' || g, 'done', now() - interval '2 days'
		  FROM generate_series(1, $1::int) g`, history)
	b.exec(t, `INSERT INTO outbox.attempts (intent_id, attempt, step, target, outcome, duration_ms, relay, started_at)
		SELECT id, 1, 'conversation', 'history', 'ok', 1, 'old', now() - interval '2 days' FROM outbox.intents`)
	b.exec(t, `ANALYZE outbox.intents`)
	live := orderIntent("live", 1)
	ids := b.insertSQL(t, []outbox.Intent{live})

	const lease = 4 * time.Second
	grip := newGrip(b.clientWithTimeout(t, relay.MaxCallTimeout(lease)))
	cfgA := testConfig("retaining")
	cfgA.Lease = lease
	cfgA.Retention = relay.RetentionConfig{Done: 24 * time.Hour}
	a, err := relay.New(b.pool, grip, withLogs(cfgA, b))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Stop)
	t.Cleanup(grip.let) // first, so that Stop does not wait for it
	select {
	case <-grip.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the live intent never reached its conversation PUT")
	}
	var token int64
	var firstExpiry time.Time
	if err := b.pool.QueryRow(ctx, `SELECT lease_token, lease_expires_at FROM outbox.intents WHERE id = $1`, ids[0]).Scan(&token, &firstExpiry); err != nil {
		t.Fatal(err)
	}
	// A second relay sweeps for expired leases and would take the intent.
	sweeper := withLogs(testConfig("sweeper"), b)
	sweeper.Lease = lease
	sr, err := relay.New(b.pool, b.clientWithTimeout(t, relay.MaxCallTimeout(lease)), sweeper)
	if err != nil {
		t.Fatal(err)
	}
	if err := sr.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sr.Stop)

	waitFor(t, 3*time.Minute, "retention to delete the history", func() bool {
		return b.count(t, `SELECT count(*) FROM outbox.intents WHERE conversation_id = 'history'`) == 0
	})
	var state, owner string
	var tokenAfter int64
	var expiry *time.Time
	if err := b.pool.QueryRow(ctx, `SELECT state, coalesce(lease_owner, ''), lease_token, lease_expires_at FROM outbox.intents WHERE id = $1`,
		ids[0]).Scan(&state, &owner, &tokenAfter, &expiry); err != nil {
		t.Fatal(err)
	}
	if state != "delivering" || owner != "retaining" || tokenAfter != token {
		t.Fatalf("after retention: state %s, owner %q, lease token %d (was %d); want the lease kept by the retaining relay", state, owner, tokenAfter, token)
	}
	// Not vacuous: the run outlasted the lease, which renewals extended.
	if expiry == nil || !expiry.After(firstExpiry.Add(lease)) {
		t.Fatalf("lease expiry moved from %s to %s only: retention ended within one lease", firstExpiry, expiry)
	}
	if n := b.count(t, `SELECT count(*) FROM outbox.retired_keys`); n != history {
		t.Errorf("%d keys retired, want %d", n, history)
	}
	if n := b.count(t, `SELECT count(*) FROM outbox.attempts WHERE relay = 'old'`); n != 0 {
		t.Errorf("%d attempts of deleted intents remain", n)
	}

	grip.let()
	b.waitSettled(t, 30*time.Second)
	var attempts int
	if err := b.pool.QueryRow(ctx, `SELECT state, attempts FROM outbox.intents WHERE id = $1`, ids[0]).Scan(&state, &attempts); err != nil {
		t.Fatal(err)
	}
	if state != "done" || attempts != 1 {
		t.Errorf("live intent %s after %d attempts, want done after 1", state, attempts)
	}
	if n := b.count(t, `SELECT count(*) FROM outbox.attempts WHERE relay = 'sweeper'`); n != 0 {
		t.Errorf("the sweeping relay made %d calls for the held intent", n)
	}
	b.checkDelivered(t, []outbox.Intent{live})
}
