package relay_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
	"github.com/outbox-relay/outbox-relay/provider/talkjs"
	"github.com/outbox-relay/outbox-relay/relay"
)

// failingConversation answers 503 to the PUT of one conversation while
// failing is set.
type failingConversation struct {
	provider.Provider
	id      string
	failing atomic.Bool
}

func (f *failingConversation) PutConversation(ctx context.Context, c provider.Conversation) error {
	if c.ID == f.id && f.failing.Load() {
		return &provider.Error{Kind: provider.Retryable, Status: 503, Err: errors.New("test: unavailable")}
	}
	return f.Provider.PutConversation(ctx, c)
}

// leaseClient is a TalkJS client for the bundle's fake whose timeout fits
// lease.
func leaseClient(t *testing.T, b *bundle, lease time.Duration) *talkjs.Client {
	t.Helper()
	c, err := talkjs.New(talkjs.Config{AppID: testAppID, SecretKey: testSecret, BaseURL: b.url,
		Timeout: relay.MaxCallTimeout(lease)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// relayPool is a pool made for the relay configured by cfg, with its
// statement and lock timeouts.
func relayPool(t *testing.T, dbURL string, cfg relay.Config) *pgxpool.Pool {
	t.Helper()
	return pgtest.Pool(t, dbURL, func(pc *pgxpool.Config) { relay.ConfigurePool(pc, cfg) })
}

// intentsDone counts the intents of ids that are done.
func intentsDone(t *testing.T, pool *pgxpool.Pool, ids []int64) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(t.Context(),
		`SELECT count(*) FROM outbox.intents WHERE id = ANY($1) AND state = 'done'`, ids).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func orderIntents(prefix string, n int) []outbox.Intent {
	var out []outbox.Intent
	for i := range n {
		out = append(out, orderIntent(fmt.Sprintf("%s-%d", prefix, i), i))
	}
	return out
}

// Another session holds a row lock on a successor and keeps it. Its head
// fails again and again, then succeeds, and its completion would clear the
// successor's parked mark: neither may hold up the relay. Unrelated
// intents are delivered all along; once the lock is released, the
// conversation finishes in order, each message once.
func TestLockedSuccessorDoesNotStallTheRelay(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	ctx := t.Context()
	cfg := withLogs(testConfig("locked-successor"), b)
	cfg.Lease = 4 * time.Second
	prov := &failingConversation{Provider: leaseClient(t, b, cfg.Lease), id: "stuck"}
	prov.failing.Store(true)
	cfg.MaxAttempts = 1000
	cfg.Retry = relay.RetryPolicy{Base: 200 * time.Millisecond, Max: 400 * time.Millisecond}
	r, err := relay.New(relayPool(t, b.dbURL, cfg), prov, cfg)
	if err != nil {
		t.Fatal(err)
	}
	stuck := []outbox.Intent{orderIntent("stuck", 1), orderIntent("stuck", 2)}
	ids := b.insertSQL(t, stuck)
	head, successor := ids[0], ids[1]
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	failures := func() int {
		var n int
		if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM outbox.attempts WHERE intent_id = $1 AND outcome = 'retryable'`,
			head).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	waitFor(t, 10*time.Second, "the head to fail", func() bool { return failures() >= 1 })

	lockConn, err := pgx.Connect(ctx, b.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer lockConn.Close(ctx)
	lock, err := lockConn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lock.Exec(ctx, `SELECT 1 FROM outbox.intents WHERE id = $1 FOR UPDATE`, successor); err != nil {
		t.Fatal(err)
	}

	// The head keeps failing; other conversations flow.
	before := failures()
	others := orderIntents("other", 20)
	otherIDs := b.insertSQL(t, others)
	waitFor(t, 20*time.Second, "unrelated intents delivered while the head fails", func() bool {
		return intentsDone(t, b.pool, otherIDs) == len(others)
	})
	waitFor(t, 10*time.Second, "the head to fail again", func() bool { return failures() >= before+2 })

	// The head succeeds; the successor's row is still locked.
	prov.failing.Store(false)
	headDropped := fmt.Sprintf("intent_id=%d", head)
	waitFor(t, 20*time.Second, "the head's result dropped (its completion waits for the locked successor)", func() bool {
		return logged(b, "result dropped", headDropped)
	})
	later := orderIntents("later", 10)
	laterIDs := b.insertSQL(t, later)
	waitFor(t, 20*time.Second, "unrelated intents delivered after the head succeeded", func() bool {
		return intentsDone(t, b.pool, laterIDs) == len(later)
	})
	var state string
	if err := b.pool.QueryRow(ctx, `SELECT state FROM outbox.intents WHERE id = $1`, successor).Scan(&state); err != nil {
		t.Fatal(err)
	}
	if state != "pending" {
		t.Errorf("successor state %s while its row is locked, want pending", state)
	}

	if err := lock.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	c := b.waitSettled(t, 60*time.Second)
	if want := len(stuck) + len(others) + len(later); c["done"] != want {
		t.Fatalf("states = %v, want %d done", c, want)
	}
	b.checkDelivered(t, append(append(stuck, others...), later...))
}

// A result the database refuses to record (here a trigger refuses its
// attempt rows) is set aside: the results around it are written, the
// relay goes on delivering, and the refused one is dropped to its lease.
// Once the database takes it, the intent is delivered again and done, its
// messages posted once.
func TestUnwritableResultIsDroppedToItsLease(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	ctx := t.Context()
	cfg := withLogs(testConfig("unwritable"), b)
	cfg.Lease = 4 * time.Second
	cfg.MaxAttempts = 1000
	r, err := relay.New(relayPool(t, b.dbURL, cfg), leaseClient(t, b, cfg.Lease), cfg)
	if err != nil {
		t.Fatal(err)
	}
	poisoned := []outbox.Intent{orderIntent("poisoned", 1)}
	poison := b.insertSQL(t, poisoned)[0]
	if _, err := b.pool.Exec(ctx, fmt.Sprintf(`
CREATE FUNCTION outbox.test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'test: attempts of intent %% refused', NEW.intent_id;
END
$$;
CREATE TRIGGER test_refuse BEFORE INSERT ON outbox.attempts
    FOR EACH ROW WHEN (NEW.intent_id = %d) EXECUTE FUNCTION outbox.test_refuse();`, poison)); err != nil {
		t.Fatal(err)
	}
	others := orderIntents("beside", 20)
	otherIDs := b.insertSQL(t, others)
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)

	waitFor(t, 20*time.Second, "the other intents delivered", func() bool {
		return intentsDone(t, b.pool, otherIDs) == len(others)
	})
	dropped := fmt.Sprintf("intent_id=%d", poison)
	waitFor(t, 20*time.Second, "the refused result dropped", func() bool {
		return logged(b, "result dropped", dropped)
	})
	later := orderIntents("later", 10)
	laterIDs := b.insertSQL(t, later)
	waitFor(t, 20*time.Second, "intents delivered after the drop", func() bool {
		return intentsDone(t, b.pool, laterIDs) == len(later)
	})
	if intentsDone(t, b.pool, []int64{poison}) != 0 {
		t.Fatal("the refused intent is done, yet its result was never written")
	}

	if _, err := b.pool.Exec(ctx, `DROP TRIGGER test_refuse ON outbox.attempts`); err != nil {
		t.Fatal(err)
	}
	c := b.waitSettled(t, 60*time.Second)
	if want := len(poisoned) + len(others) + len(later); c["done"] != want {
		t.Fatalf("states = %v, want %d done", c, want)
	}
	b.checkDelivered(t, append(append(poisoned, others...), later...))
}

// logged reports whether one line of the bundle's logs holds every part.
func logged(b *bundle, parts ...string) bool {
	for _, line := range strings.Split(b.logs.String(), "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			return true
		}
	}
	return false
}

// Another session locks the row of one intent the relay holds. The
// renewal skips that row instead of waiting for it: the relay's other
// leases are renewed, and the locked one is still counted as held.
func TestLockedLeaseDoesNotStopOtherRenewals(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	ctx := t.Context()
	cfg := withLogs(testConfig("renewals"), b)
	r, err := relay.New(relayPool(t, b.dbURL, cfg), b.client(t, testSecret), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ids := b.insertSQL(t, []outbox.Intent{orderIntent("locked-lease", 1), orderIntent("renewed", 2)})
	jobs, err := r.Claim(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(jobs) != 2 {
		t.Fatalf("claimed %d intents, want 2", len(jobs))
	}
	lockConn, err := pgx.Connect(ctx, b.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer lockConn.Close(ctx)
	lock, err := lockConn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = lock.Rollback(ctx) }()
	if _, err := lock.Exec(ctx, `SELECT 1 FROM outbox.intents WHERE id = $1 FOR UPDATE`, ids[0]); err != nil {
		t.Fatal(err)
	}
	leaseEnds := func() (locked, other time.Time) {
		if err := b.pool.QueryRow(ctx, `SELECT (SELECT lease_expires_at FROM outbox.intents WHERE id = $1),
		       (SELECT lease_expires_at FROM outbox.intents WHERE id = $2)`, ids[0], ids[1]).Scan(&locked, &other); err != nil {
			t.Fatal(err)
		}
		return locked, other
	}
	locked0, other0 := leaseEnds()
	r.RenewLeases(ctx, jobs)
	locked1, other1 := leaseEnds()
	if !other1.After(other0) {
		t.Errorf("the other lease was not renewed: ends %v, before %v", other1, other0)
	}
	if !locked1.Equal(locked0) {
		t.Errorf("the locked lease changed: ends %v, before %v", locked1, locked0)
	}
	for _, j := range jobs {
		if j.Lost() {
			t.Errorf("intent %d taken for lost after the renewal", j.ID())
		}
	}
}
