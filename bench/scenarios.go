package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
)

// drainResult is one timed drain.
type drainResult struct {
	rate    float64 // intents per second
	elapsed time.Duration
	// pgCPU is the CPU seconds the relay's Postgres backends used during
	// the drain (backendCPU), from relay start until nothing was left.
	pgCPU float64
}

// drain loads n drain intents, starts the relay and times it until every
// intent is delivered (the fake holds all messages and the system's own
// table says none is left). cpuProfile, when set, profiles the process
// during the drain.
func (e *env) drain(ctx context.Context, spec systemSpec, n int, latency time.Duration, cpuProfile string) (drainResult, error) {
	s, err := e.open(ctx, spec, 0)
	if err != nil {
		return drainResult{}, err
	}
	defer s.close()
	if err := s.r.load(ctx, n, func(i int) outbox.Intent { return drainIntent(s.tag, i) }); err != nil {
		return drainResult{}, fmt.Errorf("%s: load: %w", spec.label, err)
	}
	if err := s.prepareBacklog(ctx); err != nil {
		return drainResult{}, err
	}
	e.resetFake(latency)

	timeout := 60*time.Second + time.Duration(n)*5*time.Millisecond
	runCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if cpuProfile != "" {
		f, err := os.Create(cpuProfile)
		if err != nil {
			return drainResult{}, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return drainResult{}, err
		}
		defer pprof.StopCPUProfile()
	}
	cpuBefore, err := e.backendCPU(ctx, s.db.name, appName(spec))
	if err != nil {
		return drainResult{}, err
	}
	start := time.Now()
	if err := s.r.start(runCtx); err != nil {
		return drainResult{}, fmt.Errorf("%s: start: %w", spec.label, err)
	}
	if err := e.waitMessages(runCtx, 2*n); err != nil {
		return drainResult{}, fmt.Errorf("%s: drain: %w", spec.label, err)
	}
	if err := s.waitDrained(runCtx); err != nil {
		return drainResult{}, err
	}
	elapsed := time.Since(start)
	cpuAfter, err := e.backendCPU(ctx, s.db.name, appName(spec))
	if err != nil {
		return drainResult{}, err
	}
	if cpuProfile != "" {
		pprof.StopCPUProfile()
	}
	s.r.stop()
	if err := s.verify(ctx, n, 2*n); err != nil {
		return drainResult{}, err
	}
	return drainResult{rate: float64(n) / elapsed.Seconds(), elapsed: elapsed, pgCPU: cpuSince(cpuBefore, cpuAfter)}, nil
}

// wakeup measures an idle relay's reaction: count single-intent
// transactions, gap apart; for each, the time from just before COMMIT is
// sent to the fake storing the intent's messages (StoredAt).
func (e *env) wakeup(ctx context.Context, spec systemSpec, count int, gap time.Duration) ([]time.Duration, error) {
	s, err := e.open(ctx, spec, 0)
	if err != nil {
		return nil, err
	}
	defer s.close()
	runCtx, cancel := context.WithTimeout(ctx, 60*time.Second+time.Duration(count)*gap)
	defer cancel()
	e.resetFake(0)
	if err := s.r.start(runCtx); err != nil {
		return nil, fmt.Errorf("%s: start: %w", spec.label, err)
	}
	// Let the relay find nothing and go idle.
	time.Sleep(time.Second)

	prodPool, err := pgxpool.New(runCtx, s.db.url)
	if err != nil {
		return nil, err
	}
	defer prodPool.Close()
	if err := prodPool.Ping(runCtx); err != nil {
		return nil, err
	}
	commits := make([]time.Time, count)
	convs := make([]string, count)
	begin := time.Now()
	for i := range count {
		in := drainIntent(s.tag, i)
		convs[i] = in.Conversation.ID
		tx, err := prodPool.Begin(runCtx)
		if err != nil {
			return nil, err
		}
		if _, err := tx.Exec(runCtx, `INSERT INTO orders (customer, total_cents) VALUES ($1, $2)`, "c"+strconv.Itoa(i), 1000+i); err != nil {
			_ = tx.Rollback(runCtx)
			return nil, err
		}
		if err := s.r.enqueue(runCtx, tx, in); err != nil {
			_ = tx.Rollback(runCtx)
			return nil, fmt.Errorf("%s: enqueue: %w", spec.label, err)
		}
		commits[i] = time.Now()
		if err := tx.Commit(runCtx); err != nil {
			return nil, err
		}
		time.Sleep(time.Until(begin.Add(time.Duration(i+1) * gap)))
	}
	if err := e.waitMessages(runCtx, 2*count); err != nil {
		return nil, fmt.Errorf("%s: %w", spec.label, err)
	}
	lat := make([]time.Duration, count)
	for i, conv := range convs {
		msgs := e.fake.Messages(conv)
		if len(msgs) == 0 {
			return nil, fmt.Errorf("%s: no message stored for %s", spec.label, conv)
		}
		stored := msgs[0].StoredAt
		for _, m := range msgs[1:] {
			if m.StoredAt.Before(stored) {
				stored = m.StoredAt
			}
		}
		lat[i] = stored.Sub(commits[i])
	}
	return lat, nil
}

// producerResult is one producer run.
type producerResult struct {
	perSec float64
	errors int64
}

// producerRateLimit caps each relay's TalkJS client during producer runs
// (requests per second), so each relay runs and keeps claiming but its own
// CPU use stays small and the figure shows what producers pay.
const producerRateLimit = 400

// producers runs p concurrent producers for dur (after warm) committing
// (order row + intent) transactions, with spec's relay running unless
// relayRunning is false; with spec nil, order rows alone and no relay.
func (e *env) producers(ctx context.Context, spec *systemSpec, relayRunning bool, p int, warm, dur time.Duration) (producerResult, error) {
	sp := oursSpec()
	sp.label = "orders only"
	if spec != nil {
		sp = *spec
	}
	s, err := e.open(ctx, sp, producerRateLimit)
	if err != nil {
		return producerResult{}, err
	}
	defer s.close()
	runCtx, cancel := context.WithTimeout(ctx, 60*time.Second+warm+dur)
	defer cancel()
	e.resetFake(0)
	if spec != nil && relayRunning {
		if err := s.r.start(runCtx); err != nil {
			return producerResult{}, fmt.Errorf("%s: start: %w", sp.label, err)
		}
	}
	cfg, err := pgxpool.ParseConfig(s.db.url)
	if err != nil {
		return producerResult{}, err
	}
	cfg.MaxConns = int32(p)
	cfg.MinConns = int32(p)
	prodPool, err := pgxpool.NewWithConfig(runCtx, cfg)
	if err != nil {
		return producerResult{}, err
	}
	defer prodPool.Close()
	// Open every connection before timing.
	conns := make([]*pgxpool.Conn, p)
	for i := range conns {
		if conns[i], err = prodPool.Acquire(runCtx); err != nil {
			return producerResult{}, err
		}
	}
	for _, c := range conns {
		c.Release()
	}

	var commits, failures atomic.Int64
	var firstErr atomic.Value
	var seq atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range p {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				n := int(seq.Add(1))
				err := pgx.BeginFunc(runCtx, prodPool, func(tx pgx.Tx) error {
					if _, err := tx.Exec(runCtx, `INSERT INTO orders (customer, total_cents) VALUES ($1, $2)`, "c"+strconv.Itoa(n), 1000+n); err != nil {
						return err
					}
					if spec == nil {
						return nil
					}
					return s.r.enqueue(runCtx, tx, drainIntent(s.tag, n))
				})
				if err != nil {
					if runCtx.Err() != nil {
						return
					}
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				commits.Add(1)
			}
		}()
	}
	time.Sleep(warm)
	c0, t0 := commits.Load(), time.Now()
	time.Sleep(dur)
	c1, t1 := commits.Load(), time.Now()
	close(stop)
	wg.Wait()
	res := producerResult{perSec: float64(c1-c0) / t1.Sub(t0).Seconds(), errors: failures.Load()}
	if res.errors > 0 {
		return res, fmt.Errorf("%s: %d producer transactions failed, first: %v", sp.label, res.errors, firstErr.Load())
	}
	return res, nil
}

// backlog measures our drain rate over the first `first` completions with
// n intents pending (0 ms latency), or over as many as complete within
// limit. It returns the completions counted and the time they took.
func (e *env) backlog(ctx context.Context, n, first int, limit time.Duration) (completed int, elapsed time.Duration, err error) {
	s, err := e.open(ctx, oursSpec(), 0)
	if err != nil {
		return 0, 0, err
	}
	defer s.close()
	loadStart := time.Now()
	if err := bulkLoadOurs(ctx, s.pool, s.tag, n); err != nil {
		return 0, 0, err
	}
	if err := s.prepareBacklog(ctx); err != nil {
		return 0, 0, err
	}
	e.log.Info("backlog loaded", "intents", n, "took", time.Since(loadStart).Round(time.Millisecond))
	e.resetFake(0)
	runCtx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	start := time.Now()
	if err := s.r.start(ctx); err != nil {
		return 0, 0, err
	}
	err = e.waitMessages(runCtx, 2*first)
	elapsed = time.Since(start)
	completed = min(first, e.fake.MessageCount()/2)
	if err != nil && ctx.Err() != nil {
		return 0, 0, err
	}
	return completed, elapsed, nil
}

// bulkLoadSQL inserts drain intents $2..$3-1 (the same payloads as
// drainIntent), drawing ids from the table's sequence in order.
const bulkLoadSQL = `
INSERT INTO outbox.intents (id, payload)
SELECT nextval('outbox.intents_id_seq'), jsonb_build_object(
         'users', jsonb_build_array(
             jsonb_build_object('id', $1 || '-u' || g || 'a', 'name', 'Buyer ' || g,
                                'email', jsonb_build_array($1 || '-u' || g || 'a@example.com')),
             jsonb_build_object('id', $1 || '-u' || g || 'b', 'name', 'Seller ' || g,
                                'email', jsonb_build_array($1 || '-u' || g || 'b@example.com'), 'role', 'seller')),
         'conversation', jsonb_build_object('id', $1 || '-c' || g, 'subject', 'Order #' || g,
                                            'custom', jsonb_build_object('orderId', g::text)),
         'messages', jsonb_build_array(
             jsonb_build_object('sender', $1 || '-u' || g || 'a', 'text', 'Hello, I just placed order #' || g),
             jsonb_build_object('sender', $1 || '-u' || g || 'b', 'text', 'Thanks! Order #' || g || ' is confirmed.')))
  FROM generate_series($2::int, $3::int - 1) AS g
 ORDER BY g`

// bulkLoadOurs loads n drain intents, 10,000 per transaction, two
// transactions at a time. The rows are what producers would write, but
// the table's triggers are skipped (session_replication_role = replica):
// the per-conversation order lock, the wake-up check and the payload
// validation mean nothing for known-valid rows written before the relay
// starts, and skipping them halves the load time.
func bulkLoadOurs(ctx context.Context, pool *pgxpool.Pool, tag string, n int) error {
	const chunk = 10000
	next := atomic.Int64{}
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			for {
				lo := int(next.Add(chunk)) - chunk
				if lo >= n {
					errs <- nil
					return
				}
				err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
					if _, err := tx.Exec(ctx, "SET LOCAL session_replication_role = replica"); err != nil {
						return err
					}
					_, err := tx.Exec(ctx, bulkLoadSQL, tag, lo, min(n, lo+chunk))
					return err
				})
				if err != nil {
					errs <- fmt.Errorf("bulk load at %d: %w", lo, err)
					return
				}
			}
		}()
	}
	var first error
	for range 2 {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// economyResult counts the HTTP calls of one call-counting run.
type economyResult struct {
	requests, userPuts, batchPuts, convPuts, posts int64
	n                                              int
}

func (r economyResult) perIntent() float64 { return float64(r.requests) / float64(r.n) }

// economy delivers n intents drawn from a small set of unchanged users and
// repeated conversations, and counts the calls the fake received.
func (e *env) economy(ctx context.Context, spec systemSpec, n int) (economyResult, error) {
	return e.countCalls(ctx, spec, n, economyIntent)
}

// countCalls delivers n intents made by gen with one relay of spec, no
// rate limit and no latency, and counts the calls the fake received.
func (e *env) countCalls(ctx context.Context, spec systemSpec, n int, gen func(tag string, i int) outbox.Intent) (economyResult, error) {
	s, err := e.open(ctx, spec, 0)
	if err != nil {
		return economyResult{}, err
	}
	defer s.close()
	if err := s.r.load(ctx, n, func(i int) outbox.Intent { return gen(s.tag, i) }); err != nil {
		return economyResult{}, fmt.Errorf("%s: load: %w", spec.label, err)
	}
	if err := s.prepareBacklog(ctx); err != nil {
		return economyResult{}, err
	}
	e.resetFake(0)
	runCtx, cancel := context.WithTimeout(ctx, 60*time.Second+time.Duration(n)*10*time.Millisecond)
	defer cancel()
	if err := s.r.start(runCtx); err != nil {
		return economyResult{}, err
	}
	if err := e.waitMessages(runCtx, 2*n); err != nil {
		return economyResult{}, fmt.Errorf("%s: %w", spec.label, err)
	}
	if err := s.waitDrained(runCtx); err != nil {
		return economyResult{}, err
	}
	s.r.stop()
	if err := s.verify(ctx, n, 2*n); err != nil {
		return economyResult{}, err
	}
	st := e.fake.Stats()
	return economyResult{requests: st.Requests, userPuts: st.Routes[faketalkjs.RouteUserPut], batchPuts: st.Routes[faketalkjs.RouteUsersPut],
		convPuts: st.Routes[faketalkjs.RouteConversationPut], posts: st.Routes[faketalkjs.RouteMessagePost], n: n}, nil
}

// percentile returns the p-th percentile (0..100) of ds by nearest rank.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	idx := int(p/100*float64(len(s))+0.5) - 1
	return s[max(0, min(len(s)-1, idx))]
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// profilePath names a profile file in dir.
func profilePath(dir, name string) string { return filepath.Join(dir, name) }
