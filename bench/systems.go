package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider"
	"github.com/outbox-relay/outbox-relay/relay"
)

// relayRunner is one system under test, bound to one scratch database.
type relayRunner interface {
	// load enqueues n pending intents in bulk, before the relay starts.
	load(ctx context.Context, n int, gen func(int) outbox.Intent) error
	// enqueue writes one intent in a producer's transaction.
	enqueue(ctx context.Context, tx pgx.Tx, in outbox.Intent) error
	// start starts delivering in the background; stop ends it gracefully.
	start(ctx context.Context) error
	stop()
	// remaining counts the intents not yet delivered (a cheap query).
	remaining(ctx context.Context) (int64, error)
	// delivered counts the intents recorded as delivered.
	delivered(ctx context.Context) (int64, error)
}

// systemSpec names a system and how to build it.
type systemSpec struct {
	label    string // as printed
	template string // sysOurs, sysNaive or sysRiver
	make     func(pool *pgxpool.Pool, p provider.Provider, log *slog.Logger) (relayRunner, error)
}

// Relay settings used throughout: 100 intents in flight for every system.
const (
	inFlight       = 100
	naiveBatch     = 100
	naivePoll      = 100 * time.Millisecond
	riverTuned     = 200
	riverFetchTune = 10 * time.Millisecond
)

func oursSpec() systemSpec {
	return systemSpec{label: "ours", template: sysOurs, make: func(pool *pgxpool.Pool, p provider.Provider, log *slog.Logger) (relayRunner, error) {
		return &oursRunner{pool: pool, p: p, log: log}, nil
	}}
}

func naiveSpec(listen bool) systemSpec {
	label := "naive (poll 100 ms)"
	if listen {
		label = "naive LISTEN (always-notify trigger)"
	}
	return systemSpec{label: label, template: sysNaive, make: func(pool *pgxpool.Pool, p provider.Provider, log *slog.Logger) (relayRunner, error) {
		n := &naiveRunner{pool: pool, p: p, log: log, listen: listen}
		if listen {
			if _, err := pool.Exec(context.Background(), naiveNotifyTrigger); err != nil {
				return nil, fmt.Errorf("create notify trigger: %w", err)
			}
		}
		return n, nil
	}}
}

func riverSpec(workers int, fetch time.Duration) systemSpec {
	label := fmt.Sprintf("River %d workers, fetch %s", workers, fetch)
	return systemSpec{label: label, template: sysRiver, make: func(pool *pgxpool.Pool, p provider.Provider, log *slog.Logger) (relayRunner, error) {
		return newRiverRunner(pool, p, log, workers, fetch, false)
	}}
}

// riverWaitSpec is River whose worker waits out a 429 in place, as the
// naive relay does, instead of snoozing the job.
func riverWaitSpec(workers int, fetch time.Duration) systemSpec {
	label := fmt.Sprintf("River %d workers, fetch %s, waiting out 429s in place", workers, fetch)
	return systemSpec{label: label, template: sysRiver, make: func(pool *pgxpool.Pool, p provider.Provider, log *slog.Logger) (relayRunner, error) {
		return newRiverRunner(pool, p, log, workers, fetch, true)
	}}
}

// ---- ours ----------------------------------------------------------------

type oursRunner struct {
	pool *pgxpool.Pool
	p    provider.Provider
	log  *slog.Logger
	r    *relay.Relay
	// cfg may be adjusted before start.
	cfg relay.Config
	// reg holds the relay's metrics, read by rateCuts.
	reg *prometheus.Registry
}

// rateCuts returns the cuts of the relay's adaptive rate limit so far, by
// cause (429 or slow), from its metrics.
func (o *oursRunner) rateCuts() map[string]float64 {
	cuts := map[string]float64{}
	if o.reg == nil {
		return cuts
	}
	mfs, err := o.reg.Gather()
	if err != nil {
		return cuts
	}
	for _, mf := range mfs {
		if mf.GetName() != "outbox_relay_rate_limit_cuts_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "cause" {
					cuts[l.GetValue()] += m.GetCounter().GetValue()
				}
			}
		}
	}
	return cuts
}

// gauge returns the value of the relay's gauge name, 0 when absent.
func (o *oursRunner) gauge(name string) float64 {
	if o.reg == nil {
		return 0
	}
	mfs, err := o.reg.Gather()
	if err != nil {
		return 0
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) > 0 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	return 0
}

// loadChunk is the intents per EnqueueBatch: each takes one advisory lock
// per conversation until its transaction ends, and the lock table holds a
// few thousand.
const loadChunk = 1000

func (o *oursRunner) load(ctx context.Context, n int, gen func(int) outbox.Intent) error {
	items := make([]outbox.BatchItem, 0, loadChunk)
	for lo := 0; lo < n; lo += loadChunk {
		items = items[:0]
		for i := lo; i < min(n, lo+loadChunk); i++ {
			items = append(items, outbox.BatchItem{Intent: gen(i)})
		}
		if _, err := outbox.EnqueueBatch(ctx, o.pool, items); err != nil {
			return fmt.Errorf("enqueue batch at %d: %w", lo, err)
		}
	}
	return nil
}

func (o *oursRunner) enqueue(ctx context.Context, tx pgx.Tx, in outbox.Intent) error {
	_, err := outbox.Enqueue(ctx, tx, in)
	return err
}

func (o *oursRunner) start(ctx context.Context) error {
	cfg := o.cfg
	cfg.Concurrency = inFlight
	cfg.BatchSize = inFlight
	cfg.Logger = o.log
	if cfg.Registerer == nil {
		o.reg = prometheus.NewRegistry()
		cfg.Registerer = o.reg
	}
	r, err := relay.New(o.pool, o.p, cfg)
	if err != nil {
		return err
	}
	if err := r.Start(ctx); err != nil {
		return err
	}
	o.r = r
	return nil
}

func (o *oursRunner) stop() {
	if o.r != nil {
		o.r.Stop()
	}
}

func (o *oursRunner) remaining(ctx context.Context) (int64, error) {
	var n int64
	err := o.pool.QueryRow(ctx, `
SELECT (SELECT count(*) FROM outbox.intents WHERE state = 'pending')
     + (SELECT count(*) FROM outbox.intents WHERE state = 'delivering')`).Scan(&n)
	return n, err
}

func (o *oursRunner) delivered(ctx context.Context) (int64, error) {
	var n int64
	err := o.pool.QueryRow(ctx, `SELECT count(*) FROM outbox.intents WHERE state = 'done'`).Scan(&n)
	return n, err
}

// ---- naive ---------------------------------------------------------------

const naiveDDL = `
CREATE TABLE naive_outbox (
    id           bigserial   PRIMARY KEY,
    payload      jsonb       NOT NULL,
    processed_at timestamptz
);
CREATE INDEX naive_outbox_unprocessed_idx ON naive_outbox (id) WHERE processed_at IS NULL;
CREATE FUNCTION naive_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('naive_outbox', '');
    RETURN NULL;
END
$$;`

const naiveNotifyTrigger = `
CREATE TRIGGER naive_outbox_notify AFTER INSERT ON naive_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION naive_notify()`

// naiveRunner is the textbook outbox relay: in one transaction, lock up to
// 100 unprocessed rows with SKIP LOCKED, deliver each in its own goroutine
// (its calls one after another), mark the delivered ones, commit; poll
// every 100 ms when there was nothing to do. With listen it also wakes on
// a NOTIFY sent by an always-notify statement trigger.
type naiveRunner struct {
	pool   *pgxpool.Pool
	p      provider.Provider
	log    *slog.Logger
	listen bool

	cancel context.CancelFunc
	done   chan struct{}
}

func (n *naiveRunner) load(ctx context.Context, count int, gen func(int) outbox.Intent) error {
	const chunk = 5000
	for lo := 0; lo < count; lo += chunk {
		rows := make([][]any, 0, chunk)
		for i := lo; i < min(count, lo+chunk); i++ {
			b, err := json.Marshal(gen(i))
			if err != nil {
				return err
			}
			rows = append(rows, []any{string(b)})
		}
		if _, err := n.pool.CopyFrom(ctx, pgx.Identifier{"naive_outbox"}, []string{"payload"}, pgx.CopyFromRows(rows)); err != nil {
			return fmt.Errorf("copy naive_outbox: %w", err)
		}
	}
	return nil
}

func (n *naiveRunner) enqueue(ctx context.Context, tx pgx.Tx, in outbox.Intent) error {
	b, err := json.Marshal(in)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `INSERT INTO naive_outbox (payload) VALUES ($1)`, b)
	return err
}

func (n *naiveRunner) start(ctx context.Context) error {
	ctx, n.cancel = context.WithCancel(context.WithoutCancel(ctx))
	n.done = make(chan struct{})
	wake := make(chan struct{}, 1)
	var wg sync.WaitGroup
	if n.listen {
		conn, err := pgx.ConnectConfig(ctx, n.pool.Config().ConnConfig.Copy())
		if err != nil {
			n.cancel()
			return fmt.Errorf("naive: connect listener: %w", err)
		}
		if _, err := conn.Exec(ctx, "LISTEN naive_outbox"); err != nil {
			n.cancel()
			_ = conn.Close(context.Background())
			return fmt.Errorf("naive: listen: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close(context.Background())
			for {
				if _, err := conn.WaitForNotification(ctx); err != nil {
					return
				}
				select {
				case wake <- struct{}{}:
				default:
				}
			}
		}()
	}
	go func() {
		defer close(n.done)
		defer wg.Wait()
		timer := time.NewTimer(0)
		defer timer.Stop()
		for ctx.Err() == nil {
			got, err := n.batch(ctx)
			if err != nil && ctx.Err() == nil {
				n.log.Warn("naive relay batch failed", "error", err)
			}
			if got > 0 && err == nil {
				continue
			}
			timer.Reset(naivePoll)
			select {
			case <-ctx.Done():
			case <-wake:
			case <-timer.C:
			}
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
		}
	}()
	return nil
}

// batch delivers one batch and returns how many rows it locked.
func (n *naiveRunner) batch(ctx context.Context) (int, error) {
	tx, err := n.pool.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	rows, err := tx.Query(ctx, `
SELECT id, payload FROM naive_outbox
 WHERE processed_at IS NULL
 ORDER BY id
 LIMIT $1
   FOR UPDATE SKIP LOCKED`, naiveBatch)
	if err != nil {
		return 0, err
	}
	type row struct {
		id      int64
		payload []byte
	}
	batch, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
		var x row
		err := r.Scan(&x.id, &x.payload)
		return x, err
	})
	if err != nil {
		return 0, err
	}
	if len(batch) == 0 {
		return 0, nil
	}
	ok := make([]bool, len(batch))
	var wg sync.WaitGroup
	for i, r := range batch {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := deliverPayload(ctx, n.p, r.payload, fmt.Sprintf("naive-%d", r.id)); err != nil {
				if ctx.Err() == nil {
					n.log.Debug("naive delivery failed", "id", r.id, "error", err)
				}
				return
			}
			ok[i] = true
		}()
	}
	wg.Wait()
	ids := make([]int64, 0, len(batch))
	for i, r := range batch {
		if ok[i] {
			ids = append(ids, r.id)
		}
	}
	if _, err := tx.Exec(ctx, `UPDATE naive_outbox SET processed_at = now() WHERE id = ANY($1)`, ids); err != nil {
		return len(batch), err
	}
	return len(batch), tx.Commit(ctx)
}

func (n *naiveRunner) stop() {
	if n.cancel == nil {
		return
	}
	n.cancel()
	<-n.done
}

func (n *naiveRunner) remaining(ctx context.Context) (int64, error) {
	var c int64
	err := n.pool.QueryRow(ctx, `SELECT count(*) FROM naive_outbox WHERE processed_at IS NULL`).Scan(&c)
	return c, err
}

func (n *naiveRunner) delivered(ctx context.Context) (int64, error) {
	var c int64
	err := n.pool.QueryRow(ctx, `SELECT count(*) FROM naive_outbox WHERE processed_at IS NOT NULL`).Scan(&c)
	return c, err
}

// ---- River ---------------------------------------------------------------

// intentArgs is a River job carrying an intent; its JSON is the intent's.
type intentArgs struct {
	outbox.Intent
}

func (intentArgs) Kind() string { return "talkjs_conversation_start" }

type intentWorker struct {
	river.WorkerDefaults[intentArgs]
	p provider.Provider
	// waitInPlace makes the worker meet a 429 as the naive relay does
	// (callHonouringRetryAfter) before it would snooze.
	waitInPlace bool
}

// Work makes the intent's calls one after another. On a 429 (or its
// client's own rate limiter refusing a call) it snoozes the job for the
// Retry-After (1 s when there is none): River runs it again from its first
// call then, without counting an attempt. With waitInPlace it first waits
// out the Retry-After and makes the same call again, up to naiveMax429
// times in a row, and snoozes only after that.
func (w *intentWorker) Work(ctx context.Context, job *river.Job[intentArgs]) error {
	call := callOnce
	if w.waitInPlace {
		call = callHonouringRetryAfter
	}
	err := deliverSequential(ctx, w.p, job.Args.Intent, fmt.Sprintf("river-%d", job.ID), call)
	if wait, limited := retryAfterOf(err); limited {
		return river.JobSnooze(wait)
	}
	return err
}

// riverClientSeq numbers the River clients of this process.
var riverClientSeq atomic.Int64

type riverRunner struct {
	pool   *pgxpool.Pool
	client *river.Client[pgx.Tx]
	cancel context.CancelFunc
}

func riverConfig(workers int, fetch time.Duration, p provider.Provider, log *slog.Logger, waitInPlace bool) *river.Config {
	ws := river.NewWorkers()
	river.AddWorker(ws, &intentWorker{p: p, waitInPlace: waitInPlace})
	return &river.Config{
		// Unique per client, so several clients in one process (the
		// rate-limited scenarios run three) never share an id.
		ID:                fmt.Sprintf("bench_%d_%d", os.Getpid(), riverClientSeq.Add(1)),
		Queues:            map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: workers}},
		Workers:           ws,
		FetchCooldown:     fetch,
		FetchPollInterval: fetch,
		Logger:            log,
	}
}

func newRiverRunner(pool *pgxpool.Pool, p provider.Provider, log *slog.Logger, workers int, fetch time.Duration, waitInPlace bool) (*riverRunner, error) {
	client, err := river.NewClient(riverpgxv5.New(pool), riverConfig(workers, fetch, p, log, waitInPlace))
	if err != nil {
		return nil, fmt.Errorf("river client: %w", err)
	}
	return &riverRunner{pool: pool, client: client}, nil
}

func (r *riverRunner) load(ctx context.Context, n int, gen func(int) outbox.Intent) error {
	const chunk = 5000
	for lo := 0; lo < n; lo += chunk {
		params := make([]river.InsertManyParams, 0, chunk)
		for i := lo; i < min(n, lo+chunk); i++ {
			params = append(params, river.InsertManyParams{Args: intentArgs{gen(i)}})
		}
		if _, err := r.client.InsertManyFast(ctx, params); err != nil {
			return fmt.Errorf("river insert many: %w", err)
		}
	}
	return nil
}

func (r *riverRunner) enqueue(ctx context.Context, tx pgx.Tx, in outbox.Intent) error {
	_, err := r.client.InsertTx(ctx, tx, intentArgs{in}, nil)
	return err
}

func (r *riverRunner) start(ctx context.Context) error {
	ctx, r.cancel = context.WithCancel(context.WithoutCancel(ctx))
	return r.client.Start(ctx)
}

func (r *riverRunner) stop() {
	if r.cancel == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := r.client.Stop(ctx); err != nil && !errors.Is(err, context.Canceled) {
		_ = r.client.StopAndCancel(context.Background())
	}
	r.cancel()
}

func (r *riverRunner) remaining(ctx context.Context) (int64, error) {
	var c int64
	err := r.pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE state NOT IN ('completed', 'discarded', 'cancelled')`).Scan(&c)
	return c, err
}

func (r *riverRunner) delivered(ctx context.Context) (int64, error) {
	var c int64
	err := r.pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE state = 'completed'`).Scan(&c)
	return c, err
}
