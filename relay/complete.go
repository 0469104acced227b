package relay

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

const levelDebug = slog.LevelDebug

// maxCompletionBatch bounds one completion transaction.
const maxCompletionBatch = 500

// completeLoop writes results as they come, batching whatever is ready into
// one transaction: no added latency when idle, few round trips under load.
// It returns when results is closed and drained.
func (r *Relay) completeLoop() {
	for {
		res, ok := <-r.results
		if !ok {
			return
		}
		batch := []*result{res}
	more:
		for len(batch) < maxCompletionBatch {
			select {
			case res, ok := <-r.results:
				if !ok {
					break more
				}
				batch = append(batch, res)
			default:
				break more
			}
		}
		r.writeResults(batch)
	}
}

// writeResults records a batch, retrying while the database is unreachable.
// A result is kept until written: its attempts happened and must be
// recorded, and its lease is only given up by the write. Should the lease
// expire first, the fenced update simply changes nothing.
func (r *Relay) writeResults(batch []*result) {
	retry := dbRetryMin
	for {
		ctx, cancel := context.WithTimeout(context.Background(), r.cfg.statementDeadline())
		err := r.completeBatch(ctx, batch)
		cancel()
		if err == nil {
			r.setDB(true, "", nil)
			break
		}
		r.setDB(false, "complete", err)
		// While running, keep trying: workers wait for the completer,
		// which stops claiming (back-pressure). Only a shutdown gives up,
		// once its timeout has passed since Stop.
		if r.stopping.Load() && time.Since(r.stoppedAt()) > r.cfg.ShutdownTimeout {
			r.log.Error("shutting down without recording results; the intents will be redelivered after their lease",
				"intents", len(batch), "error", err)
			break
		}
		time.Sleep(retry)
		retry = min(2*retry, dbRetryMax)
	}
	for _, res := range batch {
		r.held.remove(res.job)
	}
	r.signal()
}

func (r *Relay) completeBatch(ctx context.Context, batch []*result) error {
	n := len(batch)
	ids := make([]int64, n)
	tokens := make([]int64, n)
	outcomes := make([]string, n)
	errs := make([]*string, n)
	delays := make([]float64, n)
	var a attemptColumns
	var syncs syncColumns
	for i, res := range batch {
		ids[i], tokens[i], outcomes[i] = res.job.id, res.job.token, res.outcome
		if res.err != "" {
			errs[i] = &res.err
		}
		delays[i] = res.delay.Seconds()
		for _, c := range res.calls {
			a.add(res.job, c)
		}
		for _, s := range res.syncs {
			syncs.add(res.job, s)
		}
		for _, id := range res.forget {
			syncs.add(res.job, userSync{id: id, hash: []byte{}})
		}
	}

	rows, err := r.pool.Query(ctx, completeBatch, planFresh, ids, tokens, outcomes, errs, delays,
		r.cfg.MaxAttempts, r.cfg.MaxAge, r.cfg.Name,
		a.intentID, a.attempt, a.step, a.target, a.status, a.outcome, a.err, a.durationMS, a.started,
		r.cfg.AppID, syncs.userID, syncs.intentID, syncs.hash, syncs.ok)
	if err != nil {
		return fmt.Errorf("complete: %w", err)
	}
	final := make(map[int64]string, n)
	for rows.Next() {
		var id int64
		var state string
		if err := rows.Scan(&id, &state); err != nil {
			rows.Close()
			return fmt.Errorf("complete: %w", err)
		}
		final[id] = state
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("complete: %w", err)
	}

	for _, res := range batch {
		state, ok := final[res.job.id]
		if !ok {
			r.metrics.fenced.Inc()
			r.log.Warn("result discarded: the intent's lease passed to another relay",
				"intent_id", res.job.id, "attempt", res.job.attempt, "outcome", res.outcome)
			continue
		}
		label := res.outcome
		if res.outcome == outcomeRetry && state == "dead" {
			label = outcomeDead
		}
		r.metrics.completed.WithLabelValues(label).Inc()
		if state == "dead" {
			r.log.Warn("intent dead", "intent_id", res.job.id, "attempt", res.job.attempt,
				"error", firstLine(res.err))
		}
	}
	return nil
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
}

func (a *attemptColumns) add(j *job, c callRecord) {
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
	a.step = append(a.step, c.step)
	a.target = append(a.target, c.target)
	a.status = append(a.status, status)
	a.outcome = append(a.outcome, c.outcome)
	a.err = append(a.err, errText)
	a.durationMS = append(a.durationMS, float32(c.duration.Seconds()*1000))
	a.started = append(a.started, c.started)
}

// syncColumns holds the ends of user PUTs as the columns completeBatch
// reads to keep outbox.synced_users true.
type syncColumns struct {
	userID   []string
	intentID []int64
	hash     [][]byte
	ok       []bool
}

func (c *syncColumns) add(j *job, s userSync) {
	c.userID = append(c.userID, s.id)
	c.intentID = append(c.intentID, j.id)
	c.hash = append(c.hash, s.hash)
	c.ok = append(c.ok, s.ok)
}
