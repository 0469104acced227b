package chaos_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/internal/pgcluster"
	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/migrations"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
	"github.com/outbox-relay/outbox-relay/relay"
)

// producer inserts intents in small transactions while the test injects
// faults, as an application would, and reports the first error on done.
type producer struct {
	done chan error
}

func startProducer(ctx context.Context, pool *pgxpool.Pool, intents []outbox.Intent, chunk int, every time.Duration) *producer {
	p := &producer{done: make(chan error, 1)}
	go func() {
		tick := time.NewTicker(every)
		defer tick.Stop()
		for lo := 0; lo < len(intents); lo += chunk {
			if err := insertTx(ctx, pool, intents[lo:min(lo+chunk, len(intents))]); err != nil {
				p.done <- err
				return
			}
			select {
			case <-ctx.Done():
				p.done <- ctx.Err()
				return
			case <-tick.C:
			}
		}
		p.done <- nil
	}()
	return p
}

func (p *producer) wait(t *testing.T) {
	t.Helper()
	select {
	case err := <-p.done:
		if err != nil {
			t.Fatalf("producer: %v", err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("producer did not finish")
	}
}

func insertTx(ctx context.Context, pool *pgxpool.Pool, intents []outbox.Intent) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		for _, in := range intents {
			payload, err := json.Marshal(in)
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `INSERT INTO outbox.intents (payload) VALUES ($1::jsonb)`, payload); err != nil {
				return err
			}
		}
		return nil
	})
}

// Fault 2, database connection loss. While intents are produced and
// delivered, every connection of the relay (its pool and its LISTEN
// connection) is killed with pg_terminate_backend, repeatedly. The relay
// reconnects by itself, LISTENs again (a later insert wakes it by NOTIFY),
// catches up, and delivers every intent exactly once.
func TestDatabaseConnectionLoss(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{Latency: 5 * time.Millisecond})
	const appName = "chaos-conn-relay"
	relayPool := pgtest.Pool(t, withAppName(t, b.dbURL, appName))
	cfg := fastRetry("conn-relay")
	cfg.Lease = 3 * time.Second
	cfg.Concurrency = 20
	// A long poll, so catching up depends on reconnecting and LISTENing.
	cfg.PollInterval = 5 * time.Second
	r := b.startRelay(t, relayPool, cfg, relay.MaxCallTimeout(cfg.Lease))

	n, rounds := params.connIntents, params.connKills
	intents := orderIntents("conn", n, max(1, n/4))
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	prod := startProducer(ctx, b.pool, intents, 10, 20*time.Millisecond)

	var terminated, listenKilled int
	var killedAt time.Time // when the last round's connections were killed (database clock)
	var worstRecovery time.Duration
	for k := 1; k <= rounds; k++ {
		threshold := n * k / (rounds + 2)
		// Listening as the server sees it: the relay's flag lags a killed
		// connection until its next read fails.
		waitUntil(t, time.Minute, fmt.Sprintf("round %d: %d intents done with the relay listening", k, threshold), func() bool {
			return countDone(b.pool) >= threshold && r.Health().Listening && listenersSince(t, b.pool, appName, killedAt) > 0
		})
		var killed, listeners int
		err := b.pool.QueryRow(ctx, `
SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)),
       count(*) FILTER (WHERE query LIKE 'LISTEN%'),
       now()
  FROM pg_stat_activity
 WHERE application_name = $1 AND datname = current_database()`, appName).Scan(&killed, &listeners, &killedAt)
		if err != nil {
			t.Fatal(err)
		}
		if listeners == 0 {
			t.Errorf("round %d: no LISTEN connection among the relay's %d connections", k, killed)
		}
		terminated += killed
		listenKilled += listeners
		doneAt := countDone(b.pool)
		d := waitUntil(t, 15*time.Second, fmt.Sprintf("round %d: the relay to listen again and make progress", k), func() bool {
			return listenersSince(t, b.pool, appName, killedAt) > 0 && r.Health().Listening &&
				(countDone(b.pool) > doneAt || doneAt+len(intents)/100 >= n)
		})
		worstRecovery = max(worstRecovery, d)
	}
	prod.wait(t)
	c := waitSettled(t, b.pool, 2*time.Minute)
	if c["dead"] != 0 {
		t.Errorf("%d intents dead", c["dead"])
	}

	// The LISTEN connection is back: an insert while the relay waits is
	// delivered by a notification.
	waitUntil(t, 30*time.Second, "the relay to wait for a notification", func() bool {
		return r.Health().Listening && queryInt(t, b.pool, `SELECT count(*) FROM outbox.wakeup WHERE waiting`) == 1
	})
	notified := r.metric(t, "outbox_relay_notifications_total")
	last := relayIntent("conn-last", n)
	insertChunks(t, b.pool, []outbox.Intent{last}, 1)
	wake := waitUntil(t, 10*time.Second, "a NOTIFY to wake the relay", func() bool {
		return r.metric(t, "outbox_relay_notifications_total") > notified && countDone(b.pool) == n+1
	})
	intents = append(intents, last)
	lost, dup := checkExactlyOnce(t, b, intents)
	reconnects := r.metric(t, "outbox_relay_listener_reconnects_total")
	if reconnects < float64(rounds) {
		t.Errorf("LISTEN connection re-established %v times, want at least %d", reconnects, rounds)
	}
	t.Logf("figures: intents=%d rounds=%d connections_terminated=%d listen_connections_terminated=%d listener_reconnects=%v "+
		"db_errors=%v recovery_max=%s wake_by_notify_after_chaos=%s lost=%d duplicates=%d",
		len(intents), rounds, terminated, listenKilled, reconnects, r.metric(t, "outbox_relay_database_errors_total"),
		worstRecovery.Round(10*time.Millisecond), wake.Round(10*time.Millisecond), lost, dup)
}

func relayIntent(conv string, n int) outbox.Intent { return orderIntents(conv, n+1, n+1)[n] }

func waitSettled(t *testing.T, pool *pgxpool.Pool, timeout time.Duration) map[string]int {
	t.Helper()
	var c map[string]int
	waitUntil(t, timeout, "every intent done or dead", func() bool {
		c = counts(t, pool)
		return c["pending"] == 0 && c["delivering"] == 0
	})
	return c
}

// Fault 3, database restart. A relay process delivers from a throwaway
// cluster that is stopped (immediate mode: a crash) mid-run and started
// again. The relay process stays up (no crash loop), /readyz reports not
// ready while the database is down, and it is ready and delivering again
// within 5s of the database coming back. Nothing is lost or duplicated.
func TestDatabaseRestart(t *testing.T) {
	t.Parallel()
	if _, err := pgcluster.Binaries(); err != nil {
		t.Skipf("no Postgres server binaries for a throwaway cluster: %v", err)
	}
	ctx := t.Context()
	cluster, err := pgcluster.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.Remove() })
	if err := execAdmin(ctx, cluster.URL("postgres"), `CREATE DATABASE chaos`); err != nil {
		t.Fatal(err)
	}
	dbURL := cluster.URL("chaos")
	if _, err := migrations.Up(ctx, dbURL, nil); err != nil {
		t.Fatal(err)
	}
	fake := faketalkjs.New(faketalkjs.Config{AppID: appID, SecretKey: secret, Seed: 3,
		Faults: faketalkjs.Faults{Latency: 60 * time.Millisecond}})
	b := &bench{pool: pgtest.Pool(t, dbURL), dbURL: dbURL, fake: fake, api: serveAPI(t, fake)}
	p := startProc(t, "restart-relay", b.relayEnv("OUTBOX_LEASE=3s", "OUTBOX_CONCURRENCY=10", "OUTBOX_BATCH_SIZE=10"))

	n := params.dbIntents
	intents := orderIntents("restart", n, max(1, n/4))
	first, second := intents[:n/2], intents[n/2:]
	insertChunks(t, b.pool, first, 500)
	waitUntil(t, 30*time.Second, "the relay to be ready and delivering", func() bool {
		return p.readyStatus() == http.StatusOK && countDone(b.pool) >= len(first)/10
	})

	if err := cluster.StopServer(ctx, "immediate"); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	notReady := waitUntil(t, 15*time.Second, "/readyz to report not ready", func() bool {
		return p.readyStatus() == http.StatusServiceUnavailable
	})
	// Keep the database down for the fault's length; the relay must stay
	// up and not ready all along.
	var samples int
	hold := time.NewTimer(max(0, params.dbDown-time.Since(down)))
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
holding:
	for {
		select {
		case <-p.exited:
			t.Fatal("the relay process exited while the database was down")
		case <-hold.C:
			break holding
		case <-tick.C:
			if s := p.readyStatus(); s != http.StatusServiceUnavailable {
				t.Errorf("/readyz = %d while the database is down, want 503", s)
			}
			samples++
		}
	}
	if err := cluster.StartServer(ctx); err != nil {
		t.Fatal(err)
	}
	up := time.Now()
	downFor := up.Sub(down)
	b.pool = pgtest.Pool(t, dbURL) // the test's old connections died with the server

	const resumeBound = 5 * time.Second
	waitUntil(t, resumeBound, "/readyz to report ready after the restart", func() bool {
		return p.readyStatus() == http.StatusOK
	})
	readyAfter := time.Since(up)
	doneAtUp := countDone(b.pool)
	waitUntil(t, resumeBound-time.Since(up), "delivery to resume after the restart", func() bool {
		return countDone(b.pool) > doneAtUp
	})
	resumeAfter := time.Since(up)

	insertChunks(t, b.pool, second, 500)
	c := waitSettled(t, b.pool, 2*time.Minute)
	if c["dead"] != 0 {
		t.Errorf("%d intents dead", c["dead"])
	}
	if !p.alive() {
		t.Error("the relay process exited")
	}
	lost, dup := checkExactlyOnce(t, b, intents)
	t.Logf("figures: intents=%d database_down_for=%s not_ready_after=%s readyz_503_samples_while_down=%d "+
		"ready_after_restart=%s delivering_after_restart=%s (bound %s) relay_restarts=0 lost=%d duplicates=%d",
		n, downFor.Round(100*time.Millisecond), notReady.Round(10*time.Millisecond), samples,
		readyAfter.Round(10*time.Millisecond), resumeAfter.Round(10*time.Millisecond), resumeBound, lost, dup)
}

func execAdmin(ctx context.Context, url, sql string) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql)
	return err
}

// listenersSince counts app's LISTEN connections opened after since
// (database clock).
func listenersSince(t *testing.T, pool *pgxpool.Pool, app string, since time.Time) int {
	t.Helper()
	return queryInt(t, pool, `
SELECT count(*)
  FROM pg_stat_activity
 WHERE application_name = $1 AND datname = current_database()
   AND query LIKE 'LISTEN%' AND backend_start > $2`, app, since)
}
