package relay_test

import (
	"fmt"
	"runtime"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
	"github.com/outbox-relay/outbox-relay/relay"
)

// BenchmarkProducers measures what the relay costs applications: 16
// producers, each on its own connection, committing (order row + intent)
// transactions, with no relay and with a relay running against a fake
// limited to 100 requests/s (so the relay's own CPU use is small and only
// the wake-up cost shows). The relay has its own pool, as the daemon does.
// Compare the two commits/s figures.
//
//	go test ./relay -run '^$' -bench Producers -benchtime 6000x -count 6
func BenchmarkProducers(b *testing.B) {
	for _, running := range []bool{false, true} {
		name := "relay=stopped"
		if running {
			name = "relay=running"
		}
		b.Run(name, func(b *testing.B) {
			const producers = 16
			bd := setup(b, faketalkjs.Faults{RateLimit: 100})
			ctx := b.Context()
			if _, err := bd.pool.Exec(ctx, `CREATE TABLE bench_orders (id bigserial PRIMARY KEY, customer text NOT NULL, placed_at timestamptz NOT NULL DEFAULT now())`); err != nil {
				b.Fatal(err)
			}
			if running {
				cfg := testConfig("bench")
				cfg.RateLimit = 100
				cfg.Logger = slogTo(bd)
				r, err := relay.New(poolOf(b, bd.dbURL, "relay", 10), bd.client(b, testSecret), cfg)
				if err != nil {
					b.Fatal(err)
				}
				if err := r.Start(ctx); err != nil {
					b.Fatal(err)
				}
				b.Cleanup(r.Stop)
			}
			apps := poolOf(b, bd.dbURL, "producer", producers)
			var seq atomic.Int64
			b.SetParallelism(producers / runtime.GOMAXPROCS(0))
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					n := seq.Add(1)
					err := pgx.BeginFunc(ctx, apps, func(tx pgx.Tx) error {
						if _, err := tx.Exec(ctx, `INSERT INTO bench_orders (customer) VALUES ($1)`, fmt.Sprint("c", n)); err != nil {
							return err
						}
						_, err := outbox.Enqueue(ctx, tx, relaytest.OrderIntent(fmt.Sprint("bench-", n), int(n)))
						return err
					})
					if err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "commits/s")
		})
	}
}

// poolOf opens a pool of exactly n connections to dbURL named app, all
// established before it returns, closed when tb ends.
func poolOf(tb testing.TB, dbURL, app string, n int) *pgxpool.Pool {
	tb.Helper()
	pool := pgtest.Pool(tb, dbURL, func(cfg *pgxpool.Config) {
		cfg.MaxConns, cfg.MinConns = int32(n), int32(n)
		cfg.ConnConfig.RuntimeParams["application_name"] = app
	})
	if err := pool.Ping(tb.Context()); err != nil {
		tb.Fatal(err)
	}
	return pool
}

// BenchmarkWakeup measures an idle relay's wake-up: each op commits one
// intent while the relay waits, and ends when the fake has stored its
// messages. Reports the p50/p99 of commit -> messages stored.
//
//	go test ./relay -run '^$' -bench Wakeup -benchtime 200x
func BenchmarkWakeup(b *testing.B) {
	bd := setup(b, faketalkjs.Faults{})
	cfg := testConfig("bench")
	cfg.PollInterval = time.Hour // only a NOTIFY can wake it
	r := bd.startRelay(b, cfg, testSecret)
	ctx := b.Context()
	relaytest.WaitFor(b, 10*time.Second, "listening", func() bool { return r.Health().Listening })
	latencies := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		relaytest.WaitFor(b, 10*time.Second, "the relay to wait", func() bool {
			var waiting bool
			err := bd.pool.QueryRow(ctx, `SELECT waiting FROM outbox.wakeup`).Scan(&waiting)
			return err == nil && waiting
		})
		b.StartTimer()
		conv := fmt.Sprint("wake-", i)
		committed := time.Now()
		if _, err := outbox.Enqueue(ctx, bd.pool, relaytest.OrderIntent(conv, i)); err != nil {
			b.Fatal(err)
		}
		var stored time.Time
		if testing.Verbose() {
			b.Logf("enqueued %s", conv)
		}
		relaytest.WaitFor(b, 10*time.Second, "delivery", func() bool {
			msgs := bd.fake.Messages(conv)
			if len(msgs) < 2 {
				return false
			}
			stored = msgs[1].StoredAt
			return true
		})
		latencies = append(latencies, stored.Sub(committed))
	}
	b.StopTimer()
	slices.Sort(latencies)
	pct := func(p float64) float64 {
		return float64(latencies[int(p*float64(len(latencies)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.95), "p95-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}

// BenchmarkClaimComplete measures the database side of delivering
// intents: claims and completions (four attempt rows, two synced users
// and a synced conversation each), no HTTP, in batches of 1 (a relay held back by the API's rate
// limit) and 100 (a full drain).
//
//	go test ./relay -run '^$' -bench ClaimComplete
func BenchmarkClaimComplete(b *testing.B) {
	for _, batch := range []int{1, 100} {
		b.Run(fmt.Sprint("batch=", batch), func(b *testing.B) { benchClaimComplete(b, batch) })
	}
}

func benchClaimComplete(b *testing.B, batch int) {
	bd := setup(b, faketalkjs.Faults{})
	ctx := b.Context()
	// Load b.N batches of pending intents, 500 per transaction (each
	// conversation's order lock is held to the end of its transaction).
	for loaded := 0; loaded < b.N*batch; loaded += 500 {
		if _, err := bd.pool.Exec(ctx, `
INSERT INTO outbox.intents (payload)
SELECT jsonb_build_object(
         'users', jsonb_build_array(jsonb_build_object('id', 'u' || g, 'name', 'User', 'email', jsonb_build_array('u@example.com'))),
         'conversation', jsonb_build_object('id', 'bench-' || g),
         'messages', jsonb_build_array(jsonb_build_object('sender', 'u' || g, 'text', 'hello')))
  FROM generate_series($1::int, $1::int + 499) AS g`, loaded); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := bd.pool.Exec(ctx, `ANALYZE outbox.intents`); err != nil {
		b.Fatal(err)
	}
	r, err := relay.New(bd.pool, bd.client(b, testSecret), testConfig("bench"))
	if err != nil {
		b.Fatal(err)
	}
	if err := r.Prepare(ctx); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	done := 0
	for range b.N {
		n, err := r.ClaimAndComplete(ctx, batch)
		if err != nil {
			b.Fatal(err)
		}
		done += n
	}
	b.StopTimer()
	if done != b.N*batch {
		b.Fatalf("completed %d intents, want %d", done, b.N*batch)
	}
	b.ReportMetric(float64(done)/b.Elapsed().Seconds(), "intents/s")
}
