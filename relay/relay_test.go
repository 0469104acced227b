package relay_test

import (
	"fmt"
	"log/slog"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
	"github.com/outbox-relay/outbox-relay/provider/talkjs"
	"github.com/outbox-relay/outbox-relay/relay"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

const (
	testAppID  = "test-app"
	testSecret = "sk_test_5ecret-VALUE-that-must-never-leak"
)

// bundle is one test's fixtures: its own database and its own fake TalkJS
// served over loopback HTTP.
type bundle struct {
	pool  *pgxpool.Pool
	dbURL string
	fake  *faketalkjs.Server
	url   string
	logs  *relaytest.SyncBuffer
}

func setup(t testing.TB, faults faketalkjs.Faults) *bundle {
	t.Helper()
	pool, dbURL := pgtest.NewPool(t)
	fake := faketalkjs.New(faketalkjs.Config{AppID: testAppID, SecretKey: testSecret, Faults: faults, Seed: 42})
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	return &bundle{pool: pool, dbURL: dbURL, fake: fake, url: srv.URL, logs: &relaytest.SyncBuffer{}}
}

// client returns a TalkJS client for the bundle's fake with the given secret.
func (b *bundle) client(t testing.TB, secret string) *talkjs.Client {
	t.Helper()
	c, err := newClient(b.url, secret, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func newClient(baseURL, secret string, legacy bool) (*talkjs.Client, error) {
	return talkjs.New(talkjs.Config{AppID: testAppID, SecretKey: secret, BaseURL: baseURL,
		LegacyAuth: legacy, Timeout: relay.MaxCallTimeout(relay.DefaultLease)}) // the longest the default lease allows: a loaded test machine answers slowly
}

// testConfig is fast enough for tests: short backoff.
func testConfig(name string) relay.Config {
	return relay.Config{
		Name:  name,
		Retry: relay.RetryPolicy{Base: 10 * time.Millisecond, Max: 100 * time.Millisecond},
	}
}

// startRelay starts a relay (stopped when the test ends) logging into b.logs.
func (b *bundle) startRelay(t testing.TB, cfg relay.Config, secret string) *relay.Relay {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slogTo(b)
	}
	r, err := relay.New(b.pool, b.client(t, secret), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	return r
}

func (b *bundle) insertSQL(t *testing.T, intents []outbox.Intent) []int64 {
	t.Helper()
	return relaytest.InsertSQL(t, b.pool, intents)
}

func (b *bundle) counts(t *testing.T) map[string]int {
	t.Helper()
	return relaytest.Counts(t, b.pool)
}

func (b *bundle) waitSettled(t *testing.T, timeout time.Duration) map[string]int {
	t.Helper()
	return relaytest.WaitSettled(t, b.pool, timeout)
}

func (b *bundle) checkDelivered(t *testing.T, intents []outbox.Intent) {
	t.Helper()
	relaytest.CheckDelivered(t, b.fake, intents)
}

var (
	orderIntent = relaytest.OrderIntent
	waitFor     = relaytest.WaitFor
)

// slogTo returns a debug-level logger writing into the bundle's logs.
func slogTo(b *bundle) *slog.Logger {
	return slog.New(slog.NewTextHandler(b.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// The claim and the completion must be planned afresh each time: a
// prepared statement's cached generic plan, made while the outbox was
// empty, kept scanning the whole table once it had grown. So no session of
// the relay's pool may hold them as prepared statements, however often
// they ran.
func TestLifetimeStatementsAreNotPrepared(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	const conns = 3
	pool := poolOf(t, b.dbURL, "relay", conns)
	cfg := testConfig("fresh-plans")
	cfg.Concurrency, cfg.BatchSize = 4, 1 // many small claims and completions
	cfg.Logger = slogTo(b)
	r, err := relay.New(pool, b.client(t, testSecret), cfg)
	if err != nil {
		t.Fatal(err)
	}
	var intents []outbox.Intent
	for i := range 60 {
		intents = append(intents, orderIntent(fmt.Sprintf("fresh-%d", i), i))
	}
	b.insertSQL(t, intents)
	if err := r.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	c := b.waitSettled(t, 30*time.Second)
	r.Stop()
	if c["done"] != len(intents) {
		t.Fatalf("states = %v, want %d done", c, len(intents))
	}
	ctx := t.Context()
	sessions := pool.AcquireAllIdle(ctx)
	if len(sessions) == 0 {
		t.Fatal("no idle session in the relay's pool to inspect")
	}
	for _, conn := range sessions {
		var prepared []string
		rows, err := conn.Query(ctx, `SELECT statement FROM pg_prepared_statements WHERE statement LIKE '%outbox.intents%'`,
			pgx.QueryExecModeSimpleProtocol) // not prepared itself
		if err == nil {
			prepared, err = pgx.CollectRows(rows, pgx.RowTo[string])
		}
		conn.Release()
		if err != nil {
			t.Fatal(err)
		}
		for _, stmt := range prepared {
			t.Errorf("a relay session holds a prepared statement over outbox.intents:\n%s", stmt)
		}
	}
}
