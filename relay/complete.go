package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

const levelDebug = slog.LevelDebug

// maxCompletionBatch bounds one completion transaction.
const maxCompletionBatch = 500

// completer is the service that records results. Workers hand it their
// results (send); it writes whatever is ready in one transaction: no added
// latency when idle, few round trips under load. Stop closes its queue
// and returns once every result sent before has been written (or dropped,
// see writeResults): stop it after the worker pool.
//
// Its goroutine owns the results queue and the batch being written; it
// removes the intents it wrote from the set of held leases.
type completer struct {
	serviceEnv
	cfg       completerConfig
	held      *leaseSet     // removes what it wrote or dropped
	writes    *atomic.Int64 // the database's accepted writes: counts its own, reads all
	warns     *warnEvery    // retryable failures, logged at most once per class per minute
	stopBegan func() (time.Time, bool)
	startStop

	mu      sync.Mutex
	results chan *result // nil when not started
}

// newCompleter makes the completer; stopBegan reports when Relay.Stop
// began, and whether it did.
func newCompleter(env serviceEnv, cfg completerConfig, held *leaseSet, writes *atomic.Int64, warns *warnEvery, stopBegan func() (time.Time, bool)) *completer {
	return &completer{serviceEnv: env, cfg: cfg, held: held, writes: writes, warns: warns, stopBegan: stopBegan,
		startStop: startStop{name: "completer"}}
}

// Start writes results in the background until Stop.
func (c *completer) Start(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.results != nil {
		return errors.New("completer: already started")
	}
	results := make(chan *result, c.cfg.QueueSize)
	if err := c.start(ctx, func(context.Context) { c.loop(results) }); err != nil {
		return err
	}
	c.results = results
	return nil
}

// Stop closes the queue and waits until it is written.
func (c *completer) Stop(ctx context.Context) error {
	c.mu.Lock()
	if c.results != nil {
		close(c.results)
		c.results = nil
	}
	c.mu.Unlock()
	return c.stop(ctx)
}

// send queues a result. Only workers send, and only while the completer
// runs (the pool is stopped before it).
func (c *completer) send(res *result) {
	c.mu.Lock()
	results := c.results
	c.mu.Unlock()
	results <- res
}

// loop writes results as they come, batching whatever is ready (and, in a
// burst, what follows within completionLinger) into one transaction. It
// returns when results is closed and drained.
func (c *completer) loop(results chan *result) {
	for res := range results {
		c.writeResults(results, lingerResults(results, moreResults(results, []*result{res})))
	}
}

// A burst of results (a claimed batch ending together) is written as one
// statement: once the completer holds at least completionBurst results
// and fewer than completionBatch, it waits up to completionLinger for more.
// Each completion is planned afresh (planFresh), about 2 ms of the
// server's CPU whatever its size, so fewer, larger writes cost Postgres
// less per intent (docs/benchmarks.md: about 8% less backend CPU in the
// 0 ms drain). A lone result is written at once: no added latency when idle.
const (
	completionBurst  = 2
	completionBatch  = 100
	completionLinger = 5 * time.Millisecond
)

// lingerResults adds to batch the results that arrive within
// completionLinger, when batch is a burst short of completionBatch.
func lingerResults(results chan *result, batch []*result) []*result {
	if len(batch) < completionBurst || len(batch) >= completionBatch {
		return batch
	}
	t := time.NewTimer(completionLinger)
	defer t.Stop()
	for len(batch) < completionBatch {
		select {
		case res, ok := <-results:
			if !ok {
				return batch
			}
			batch = append(batch, res)
		case <-t.C:
			return batch
		}
	}
	return batch
}

// moreResults adds the results ready now to batch, up to a full batch.
func moreResults(results chan *result, batch []*result) []*result {
	for len(batch) < maxCompletionBatch {
		select {
		case res, ok := <-results:
			if !ok {
				return batch
			}
			batch = append(batch, res)
		default:
			return batch
		}
	}
	return batch
}

// writeResults records a batch (results arriving on results meanwhile
// join it when it must be tried again). A result is kept until written: its
// attempts happened and must be recorded, and its lease is only given up by
// the write. Should the lease expire first, the fenced update simply
// changes nothing.
//
// A batch the database refuses is split in halves until the results it
// refuses are alone, and the others are written. A result refused alone
// (its row locked by a session that does not let go, data the database
// will not take) is tried again a few times, then dropped: its lease is no
// longer renewed, so it expires and the intent is delivered again, its
// messages deduplicated by their idempotency keys. While the database does
// not answer at all, nothing is split or dropped: the batch is tried again
// with backoff, and results that arrive meanwhile join it.
func (c *completer) writeResults(results chan *result, batch []*result) {
	rejections := map[*result]int{}
	writesBefore := map[*result]int64{} // c.writes when the result was first refused
	retry := dbRetryMin
	for len(batch) > 0 {
		var failed []failedWrite
		c.writeSplitting(batch, &failed)
		if len(failed) == 0 {
			break
		}
		stopped, stopping := c.stopBegan()
		shutdownOver := stopping && time.Since(stopped) > c.cfg.ShutdownTimeout
		batch = batch[:0]
		for _, f := range failed {
			cause := writeErrorCause(f.err)
			if cause == writeRejected {
				if rejections[f.res] == 0 {
					writesBefore[f.res] = c.writes.Load()
				}
				rejections[f.res]++
			}
			verdict := afterFailedWrite(writeFailure{
				cause:        cause,
				rejections:   rejections[f.res],
				othersOK:     rejections[f.res] > 0 && c.writes.Load() > writesBefore[f.res],
				shutdownOver: shutdownOver,
			})
			if verdict == writeAgain {
				batch = append(batch, f.res)
				continue
			}
			c.dropResult(f.res, f.err, shutdownOver)
		}
		if len(batch) == 0 {
			break
		}
		time.Sleep(retry)
		retry = min(2*retry, dbRetryMax)
		// Results that arrived meanwhile go with the next try, so that
		// they are not held up behind these.
		batch = moreResults(results, batch)
	}
	c.wake()
}

// failedWrite is a result whose write failed, with the error.
type failedWrite struct {
	res *result
	err error
}

// writeSplitting writes batch, splitting it while the database refuses it
// (see splitWrite), and appends the results it could not write to failed.
func (c *completer) writeSplitting(batch []*result, failed *[]failedWrite) {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.StatementDeadline)
	err := c.completeBatch(ctx, batch)
	cancel()
	if err == nil {
		c.setDB(true, "", nil)
		c.writes.Add(1)
		for _, res := range batch {
			c.held.remove(res.intent)
		}
		return
	}
	c.setDB(false, "complete", err)
	if !splitWrite(len(batch), writeErrorCause(err)) {
		for _, res := range batch {
			*failed = append(*failed, failedWrite{res, err})
		}
		return
	}
	mid := len(batch) / 2
	c.writeSplitting(batch[:mid], failed)
	c.writeSplitting(batch[mid:], failed)
}

// dropResult gives up writing a result: its lease is no longer renewed, so
// it expires and the intent is delivered again.
func (c *completer) dropResult(res *result, err error, shutdown bool) {
	c.held.remove(res.intent)
	c.metrics.dropped.Inc()
	if shutdown {
		c.log.Error("shutting down without recording a result; the intent will be delivered again after its lease",
			"intent_id", res.intent.id, "attempt", res.intent.attempt, "outcome", res.outcome, "error", err)
		return
	}
	c.log.Error("result dropped: the database refuses to record it; the intent will be delivered again after its lease",
		"intent_id", res.intent.id, "attempt", res.intent.attempt, "outcome", res.outcome, "error", err)
}

// writeCause is why a completion write failed.
type writeCause int

const (
	// writeUnavailable: the database did not run the statement (no
	// connection, shutting down, out of resources, read-only, a schema it
	// does not know): no write would succeed, whichever results it holds.
	writeUnavailable writeCause = iota
	// writeRejected: the database ran the statement and refused it for
	// something in it: a row's data, a lock it waited for too long, a
	// deadlock. Smaller batches may succeed.
	writeRejected
)

// writeErrorCause classifies a completion error by its SQLSTATE class.
func writeErrorCause(err error) writeCause {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return writeUnavailable
	}
	switch pgErr.Code[:2] {
	case "22", // data exception
		"23", // integrity constraint violation
		"40", // deadlock, serialization failure
		"54", // program limit exceeded (a value too large)
		"55", // lock not available (lock_timeout)
		"P0": // raised by a trigger
		return writeRejected
	}
	if pgErr.Code == "57014" { // query_canceled: statement_timeout
		return writeRejected
	}
	return writeUnavailable
}

// splitWrite reports whether a failed write of n results is worth trying
// again in halves: only when the database refused something in it.
func splitWrite(n int, cause writeCause) bool {
	return n > 1 && cause == writeRejected
}

// maxWriteRejections is how many times a result alone may be refused
// before it is dropped.
const maxWriteRejections = 3

// writeFailure describes a result whose write just failed, alone or with
// the database unavailable.
type writeFailure struct {
	cause        writeCause
	rejections   int  // times it was refused alone
	othersOK     bool // other writes succeeded since it was first refused
	shutdownOver bool // Stop was called and its timeout has passed
}

type writeVerdict int

const (
	writeAgain writeVerdict = iota
	writeDrop
)

// afterFailedWrite decides whether to try a failed result again or drop it.
// A result is dropped only when the database refused it alone several
// times while accepting other writes: a database that refuses everything
// is a database in trouble, and the result waits for it. A shutdown whose
// timeout has passed drops everything.
func afterFailedWrite(f writeFailure) writeVerdict {
	switch {
	case f.shutdownOver:
		return writeDrop
	case f.cause == writeRejected && f.rejections >= maxWriteRejections && f.othersOK:
		return writeDrop
	default:
		return writeAgain
	}
}

// completeParams are completeBatch's arguments: the batch's results as
// columns, its attempts (attempt_), its user and conversation PUTs
// (sync_, conv_), and the relay's settings.
type completeParams struct {
	ids         []int64
	tokens      []int64
	outcomes    []string
	errs        []*string
	delays      []float64 // seconds
	maxAttempts int
	maxAge      time.Duration
	relay       string
	appID       string
	attempts    attemptColumns
	syncs       syncColumns
	convs       convSyncColumns
}

// args names completeBatch's parameters.
func (p *completeParams) args() pgx.NamedArgs {
	a, s, c := &p.attempts, &p.syncs, &p.convs
	return pgx.NamedArgs{
		"ids": p.ids, "tokens": p.tokens, "outcomes": p.outcomes, "errors": p.errs, "delays_s": p.delays,
		"max_attempts": p.maxAttempts, "max_age": p.maxAge, "relay": p.relay, "app_id": p.appID,
		"attempt_intent_ids": a.intentID, "attempt_numbers": a.attempt, "attempt_steps": a.step,
		"attempt_targets": a.target, "attempt_statuses": a.status, "attempt_outcomes": a.outcome,
		"attempt_errors": a.err, "attempt_duration_ms": a.durationMS, "attempt_started": a.started,
		"attempt_call_ids": a.callID,
		"sync_user_ids":    s.userID, "sync_intent_ids": s.intentID, "sync_hashes": s.hash, "sync_ok": s.ok,
		"conv_ids": c.conversationID, "conv_intent_ids": c.intentID, "conv_hashes": c.hash, "conv_ok": c.ok,
	}
}

// completeParamsOf lays a batch out as completeBatch's columns.
func (c *completer) completeParamsOf(batch []*result) *completeParams {
	n := len(batch)
	p := &completeParams{ids: make([]int64, n), tokens: make([]int64, n), outcomes: make([]string, n),
		errs: make([]*string, n), delays: make([]float64, n),
		maxAttempts: c.cfg.MaxAttempts, maxAge: c.cfg.MaxAge, relay: c.cfg.Name, appID: c.cfg.AppID}
	for i, res := range batch {
		p.ids[i], p.tokens[i], p.outcomes[i] = res.intent.id, res.intent.token, string(res.outcome)
		if res.err != "" {
			p.errs[i] = &res.err
		}
		p.delays[i] = res.delay.Seconds()
		for _, call := range res.calls {
			p.attempts.add(res.intent, call)
		}
		for _, s := range res.syncs {
			p.syncs.add(res.intent, s)
		}
		for _, id := range res.forget {
			p.syncs.add(res.intent, userSync{id: id, hash: []byte{}})
		}
		if conv := res.convRecord(); conv != nil {
			p.convs.add(res.intent, conv)
		}
	}
	return p
}

// completedRow is one intent completeBatch changed.
type completedRow struct {
	ID    int64   `db:"id"`
	State State   `db:"state"`
	AgeS  float64 `db:"age_s"`
}

// completeBatch records a batch of results in one statement, then counts
// and logs what became of each.
func (c *completer) completeBatch(ctx context.Context, batch []*result) error {
	completed, err := c.q.complete(ctx, c.completeParamsOf(batch))
	if err != nil {
		return fmt.Errorf("complete: %w", err)
	}
	final := make(map[int64]State, len(completed))
	for _, row := range completed {
		final[row.ID] = row.State
		if row.State == StateDone {
			c.metrics.latency.Observe(row.AgeS)
		}
	}
	for _, res := range batch {
		c.reportCompletion(res, final)
	}
	return nil
}

// reportCompletion counts and logs what became of one result: final
// holds the state of each intent the completion changed.
func (c *completer) reportCompletion(res *result, final map[int64]State) {
	state, ok := final[res.intent.id]
	if !ok {
		c.metrics.fenced.Inc()
		c.log.Warn("result discarded: the intent's lease passed to another relay",
			"intent_id", res.intent.id, "attempt", res.intent.attempt, "outcome", res.outcome)
		return
	}
	label := res.outcome
	if res.outcome == outcomeRetry && state == StateDead {
		label = outcomeDead
	}
	c.metrics.completed.WithLabelValues(string(label)).Inc()
	c.logStateChange(res.intent.id, res.intent.attempt, StateDelivering, state, string(label))
	if res.outcome == outcomeRetry && state == StatePending {
		c.warns.logRetryable(c.log, c.metrics, res)
	}
	if state == StateDead {
		// One line per dead letter, with its reason; outbox-relay
		// inspect and outbox.dead_letters have the rest.
		reason := "permanent failure"
		if res.outcome == outcomeRetry {
			reason = "retry budget spent"
		}
		c.log.Warn("intent dead", "intent_id", res.intent.id, "attempt", res.intent.attempt,
			"reason", reason, "error", firstLine(res.err))
	}
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// attemptColumns holds attempt records as the columns completeBatch inserts.
type attemptColumns struct {
	intentID   []int64
	attempt    []int32
	step       []string
	target     []string
	status     []*int32
	outcome    []string
	err        []*string
	durationMS []float32
	started    []time.Time
	callID     []*string // uuid text; nil for a call of one intent
}

func (a *attemptColumns) add(j *claimedIntent, c callRecord) {
	var status *int32
	if c.status != 0 {
		s := int32(c.status)
		status = &s
	}
	var errText *string
	if c.err != "" {
		errText = &c.err
	}
	a.intentID = append(a.intentID, j.id)
	a.attempt = append(a.attempt, int32(j.attempt))
	a.step = append(a.step, string(c.step))
	a.target = append(a.target, c.target)
	a.status = append(a.status, status)
	a.outcome = append(a.outcome, string(c.outcome))
	a.err = append(a.err, errText)
	a.durationMS = append(a.durationMS, float32(c.duration.Seconds()*1000))
	a.started = append(a.started, c.started)
	var callID *string
	if c.callID != "" {
		callID = &c.callID
	}
	a.callID = append(a.callID, callID)
}

// syncColumns holds the ends of user PUTs as the columns completeBatch
// reads to keep outbox.synced_users true.
type syncColumns struct {
	userID   []string
	intentID []int64
	hash     [][]byte
	ok       []bool
}

func (c *syncColumns) add(j *claimedIntent, s userSync) {
	c.userID = append(c.userID, s.id)
	c.intentID = append(c.intentID, j.id)
	c.hash = append(c.hash, s.hash)
	c.ok = append(c.ok, s.ok)
}

// convSyncColumns holds the ends of conversation PUTs as the columns
// completeBatch reads to keep outbox.synced_conversations true.
type convSyncColumns struct {
	conversationID []string
	intentID       []int64
	hash           [][]byte
	ok             []bool
}

func (c *convSyncColumns) add(j *claimedIntent, s *convSync) {
	c.conversationID = append(c.conversationID, s.id)
	c.intentID = append(c.intentID, j.id)
	c.hash = append(c.hash, s.hash)
	c.ok = append(c.ok, s.ok)
}
