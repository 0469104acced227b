package relay

import (
	"context"
	"crypto/sha256"
	"fmt"
	"slices"
	"time"
)

// ClaimAndComplete claims up to n intents and records them all done, as a
// delivery round would (two users PUT, the conversation PUT and recorded,
// the messages), without making any calls. It returns how many were
// claimed. For benchmarks.
func (r *Relay) ClaimAndComplete(ctx context.Context, n int) (int, error) {
	jobs, err := r.claimer.claim(ctx, n)
	if err != nil {
		return 0, err
	}
	batch := make([]*result, len(jobs))
	for i, j := range jobs {
		u, v := fmt.Sprint("u", j.id), fmt.Sprint("v", j.id)
		hash := sha256.Sum256([]byte(u))
		batch[i] = &result{intent: j, outcome: outcomeDone, calls: []callRecord{
			{step: stepUser, target: u, status: 200, outcome: "ok", started: j.claimed},
			{step: stepUser, target: v, status: 200, outcome: "ok", started: j.claimed},
			{step: stepConversation, target: "c", status: 200, outcome: "ok", started: j.claimed},
			{step: stepMessages, target: "c", status: 200, outcome: "ok", started: j.claimed},
		}, syncs: []userSync{{id: u, hash: hash[:], ok: true}, {id: v, hash: hash[:], ok: true}}}
		if j.convHash != nil {
			batch[i].conv = &convSync{id: fmt.Sprint("c", j.id), hash: j.convHash, ok: true}
		}
	}
	if len(batch) == 0 {
		return 0, nil
	}
	return len(jobs), r.completer.completeBatch(ctx, batch)
}

// Prepare checks the schema as Start would, without starting anything.
func (r *Relay) Prepare(ctx context.Context) error {
	var waiting bool
	return r.pool.QueryRow(ctx, schemaCheck).Scan(&waiting)
}

// ExpireLeases runs one sweep for expired leases now, with a pass for
// stranded parked heads.
func (r *Relay) ExpireLeases(ctx context.Context) {
	r.sweeper.expireLeases(ctx)
	r.sweeper.unparkHeads(ctx)
}

// StopSweeper stops the relay's own sweeps for expired leases (the rest
// of the relay runs on), so that only another relay's sweep can take an
// intent back.
func (r *Relay) StopSweeper(ctx context.Context) error { return r.sweeper.Stop(ctx) }

// ClaimedIntent is a claimed intent, for tests that drive claims and
// completions.
type ClaimedIntent = claimedIntent

// ID is the claimed intent's id.
func (j *claimedIntent) ID() int64 { return j.id }

// Claim claims up to n intents as the claimer would, without delivering them.
func (r *Relay) Claim(ctx context.Context, n int) ([]*ClaimedIntent, error) {
	return r.claimer.claim(ctx, n)
}

// Complete records jobs with one outcome (done, dead, retry, release) and
// no calls, the next attempt due after delay.
func (r *Relay) Complete(ctx context.Context, jobs []*ClaimedIntent, how string, delay time.Duration) error {
	batch := make([]*result, len(jobs))
	for i, j := range jobs {
		batch[i] = &result{intent: j, outcome: outcome(how), delay: delay}
		if outcome(how) != outcomeDone {
			batch[i].err = "test: " + how
		}
	}
	return r.completer.completeBatch(ctx, batch)
}

// ClaimStatement is the claim statement and its arguments for n intents.
func (r *Relay) ClaimStatement(n int) (string, []any) {
	return claimBatch, r.claimer.claimParams(n).args()
}

// RenewLeases holds jobs and renews their leases as the heartbeat would.
func (r *Relay) RenewLeases(ctx context.Context, jobs []*ClaimedIntent) {
	for _, j := range jobs {
		r.held.add(j)
	}
	r.keeper.renewLeases(ctx)
}

// Lost reports whether a renewal found the intent no longer held.
func (j *claimedIntent) Lost() bool { return j.deadline.Load() == 0 }

// RetentionRun counts what one retention run deleted.
type RetentionRun = retentionRun

// RetainOnce runs retention once, now, as the service does every interval.
func (r *Relay) RetainOnce(ctx context.Context) (RetentionRun, error) { return r.retainer.runOnce(ctx) }

// DeleteDoneSQL is retention's statement for done intents: $1 age, $2
// batch size.
const DeleteDoneSQL = deleteDone

// CompleteUserPuts records the claimed intents done, each having PUT every
// user the claim did not skip, answered 200 unless failed[intent id] names
// the user. No call is made.
func (r *Relay) CompleteUserPuts(ctx context.Context, jobs []*ClaimedIntent, failed map[int64][]string) error {
	batch := make([]*result, len(jobs))
	for i, j := range jobs {
		res := &result{intent: j, outcome: outcomeDone}
		for id, hash := range j.hashes {
			if j.skip[id] {
				continue
			}
			ok := !slices.Contains(failed[j.id], id)
			res.syncs = append(res.syncs, userSync{id: id, hash: hash, ok: ok})
		}
		batch[i] = res
	}
	return r.completer.completeBatch(ctx, batch)
}

// UnparkHeadsStatement is the sweep's statement that unparks stranded heads,
// with its arguments for a pass from the first conversation.
func UnparkHeadsStatement() (string, []any) { return unparkHeads, []any{"", unparkHeadsPerSweep} }

// RefreshGauges reads the queue gauges now, as the relay does every
// gaugeInterval.
func (r *Relay) RefreshGauges(ctx context.Context) { r.gauges.refresh(ctx) }
