package relay

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime/debug"
	"sync"
	"time"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider"
)

// errLeaseExpired stops a delivery whose lease may have passed to another
// relay (heartbeats failed for longer than the lease).
var errLeaseExpired = errors.New("lease expired before the call: intent left to its next owner")

// errPaused stops a delivery because the relay paused (refused credentials
// or an open circuit) after the intent was claimed; it goes back to pending.
var errPaused = errors.New("delivery paused: TalkJS refused the credentials or keeps failing")

// maxErrorLen bounds error text stored in the database.
const maxErrorLen = 2000

// callRecord is one row of outbox.attempts.
type callRecord struct {
	step     callStep
	target   string
	status   int // 0: no response
	outcome  callOutcome
	err      string
	duration time.Duration
	started  time.Time
	callID   string // shared by the rows of one batch call (a uuid); "" for a call of one intent
}

// userSync is the end of one user PUT, for outbox.synced_users: ok when
// TalkJS answered 200 for the content hashing to hash. Anything else (no
// answer, an error, a skip that a later failure put in doubt) leaves
// TalkJS's copy unknown, and the record goes.
type userSync struct {
	id   string
	hash []byte
	ok   bool
}

// result is the outcome of one delivery attempt, written by the completer.
type result struct {
	intent  *claimedIntent
	outcome outcome
	err     string
	delay   time.Duration // before the next attempt (retry, release)

	mu      sync.Mutex
	calls   []callRecord
	syncs   []userSync
	skipped []string // users not PUT because TalkJS was thought to have them
	forget  []string // users to drop from synced_users: TalkJS may not have them

	// The conversation PUT's end, for outbox.synced_conversations (see
	// convsync.go); nil when syncs are off or the PUT was not reached.
	// Written by the delivery's own goroutine only.
	conv *convSync
}

func (res *result) record(c callRecord) {
	res.mu.Lock()
	res.calls = append(res.calls, c)
	res.mu.Unlock()
}

// deliver makes one intent's calls in contract order: its users (synced
// with its claim batch's, see userbatch.go), then the conversation, then
// the messages.
func (r *Relay) deliver(ctx context.Context, j *claimedIntent) *result {
	res := &result{intent: j}
	if j.users == nil {
		// Not started with its claim batch (see dispatch): alone.
		r.startUserSync(ctx, []*claimedIntent{j}, []context.Context{ctx}, &sync.WaitGroup{})
	}
	in := j.users.intent
	if err := j.users.err; err != nil {
		return r.decide(res, err, "")
	}
	if err := r.awaitUsers(j, res); err != nil {
		return r.decide(res, err, stepUser)
	}

	conv := provider.Conversation{
		ID:           in.Conversation.ID,
		Participants: in.ResolvedParticipants(),
		Subject:      in.Conversation.Subject,
		Custom:       in.Conversation.Custom,
	}
	if err := r.putConversation(ctx, j, res, conv); err != nil {
		return r.decide(res, err, stepConversation)
	}

	msgs := make([]provider.Message, len(in.Messages))
	for i, m := range in.Messages {
		msgs[i] = provider.Message{
			Text:           m.Text,
			Sender:         m.Sender,
			Type:           m.ResolvedType(),
			Custom:         m.Custom,
			IdempotencyKey: idempotencyKey(j.key, i),
		}
	}
	for lo := 0; lo < len(msgs); lo += provider.MaxMessagesPerPost {
		hi := min(lo+provider.MaxMessagesPerPost, len(msgs))
		target := conv.ID
		if len(msgs) > provider.MaxMessagesPerPost {
			target = fmt.Sprintf("%s [%d-%d]", conv.ID, lo, hi-1)
		}
		chunk := msgs[lo:hi]
		if err := r.call(ctx, j, res, stepMessages, target, func(ctx context.Context) error {
			return r.provider.PostMessages(ctx, conv.ID, chunk)
		}); err != nil {
			return r.decide(res, err, stepMessages)
		}
	}
	res.outcome = outcomeDone
	return res
}

// idempotencyKey is the same for a message on every attempt, by any relay,
// after any crash; the intent's delivery_key is random per insert, so keys
// never repeat across databases sharing a TalkJS app, restored backups
// included.
func idempotencyKey(deliveryKey string, index int) string {
	return fmt.Sprintf("%s-%d", deliveryKey, index)
}

// deliverSafely is deliver with a panic turned into a dead intent, so an
// intent that trips a bug fails alone instead of crashing the relay (and,
// redelivered, the next one).
func (r *Relay) deliverSafely(ctx context.Context, j *claimedIntent) (res *result) {
	defer func() {
		if p := recover(); p != nil {
			r.log.Error("delivery panicked; intent dead", "intent_id", j.id, "panic", p, "stack", string(debug.Stack()))
			res = &result{intent: j, outcome: outcomeDead, err: truncate(fmt.Sprintf("attempt %d: relay error: panic: %v", j.attempt, p))}
		}
	}()
	return r.deliver(ctx, j)
}

// skipUser records a user PUT not made because TalkJS has that content.
func (r *Relay) skipUser(res *result, id, why string) {
	res.record(callRecord{step: stepUser, target: id, outcome: callSkipped, err: why, started: time.Now()})
	res.mu.Lock()
	res.skipped = append(res.skipped, id)
	res.mu.Unlock()
	r.metrics.calls.WithLabelValues(string(stepUser), string(callSkipped)).Inc()
}

// call makes one API call for one intent (see callFor) and records it.
func (r *Relay) call(ctx context.Context, j *claimedIntent, res *result, step callStep, target string, fn func(context.Context) error) error {
	rec, err := r.callFor(ctx, []*claimedIntent{j}, step, fn)
	if rec != nil {
		rec.target = target
		res.record(*rec)
	}
	return err
}

// noAnswer turns a call's deadline passing (the lease's end less its
// margin) into what it is: the API did not answer in time, a Retryable
// failure that is counted, backs off and feeds the breaker. Only the
// delivery's own context ending (shutdown, or a renewal that found the
// intent owned by another relay: jobEnded) leaves a context error, which
// releases the intent. Providers that already say "no answer" (a
// *provider.Error) are left alone.
func noAnswer(err error, jobEnded bool, budget time.Duration) error {
	var pe *provider.Error
	if err == nil || jobEnded || errors.As(err, &pe) || !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return &provider.Error{Kind: provider.Retryable,
		Err: fmt.Errorf("no answer within %s (the end of the lease, less its margin)", budget.Round(time.Millisecond))}
}

// releases reports whether err ends an attempt without it being the
// intent's or the API's fault: a shutdown, a lease that passed or may
// have passed to another relay, a pause. The attempt is given back.
func releases(err error) bool {
	var pe *provider.Error
	if errors.As(err, &pe) {
		return false
	}
	return errors.Is(err, errLeaseExpired) || errors.Is(err, errPaused) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// decide turns the error that ended an attempt into its outcome.
func (r *Relay) decide(res *result, err error, step callStep) *result {
	return decideOutcome(res, err, step, r.cfg.Retry)
}

// decideOutcome is decide without the relay: res's outcome, error text
// and delay after err ended the attempt at step ("" before any step).
func decideOutcome(res *result, err error, step callStep, retry RetryPolicy) *result {
	j := res.intent
	msg := err.Error()
	if step != "" {
		msg = fmt.Sprintf("attempt %d: %s: %s", j.attempt, step, msg)
	} else {
		msg = fmt.Sprintf("attempt %d: %s", j.attempt, msg)
	}
	res.err = truncate(msg)
	var pe *provider.Error
	switch {
	case releases(err):
		// Shutdown or lost lease: not the intent's fault.
		res.outcome = outcomeRelease
	case errors.As(err, &pe):
		switch pe.Kind {
		case provider.Permanent:
			decidePermanent(res, step, pe, retry)
		case provider.RateLimited:
			// The API's 429, or the client's own limiter refusing this
			// call (Status 0): back to pending alone, after the wait.
			res.outcome = outcomeRelease
			res.delay = max(min(pe.RetryAfter, maxRetryAfter), retry.Base)
		case provider.Auth:
			res.outcome = outcomeRelease
		default:
			res.outcome = outcomeRetry
			res.delay = max(retry.backoff(j.attempt), min(pe.RetryAfter, maxRetryAfter))
		}
	case errors.Is(err, outbox.ErrInvalid) || step == "":
		// The stored payload cannot be delivered as it is.
		res.outcome = outcomeDead
	default:
		res.outcome = outcomeRetry
		res.delay = retry.backoff(j.attempt)
	}
	return res
}

// decidePermanent decides an attempt the API refused for good: dead,
// unless a skipped PUT may be to blame (then tried again with it).
func decidePermanent(res *result, step callStep, pe *provider.Error, retry RetryPolicy) {
	res.outcome = outcomeDead
	if doubtConversation(res, step, pe) {
		// The conversation PUT was skipped on the strength of an
		// earlier sync: try again with the PUT (the record is
		// gone) before judging the intent. No other intent of
		// the conversation runs meanwhile to sync it again, so
		// the next attempt PUTs it; the retry is counted.
		res.outcome = outcomeRetry
		res.delay = retry.backoff(1)
	}
	if len(res.skipped) > 0 && step != stepUser && pe.Status != 0 {
		// A user PUT was skipped on the strength of an earlier
		// sync; TalkJS may have lost or changed that user since,
		// so the record goes. On the first attempt, try again
		// with every user PUT before judging the intent. Only for
		// an answer from TalkJS (not a request the client refused
		// to send), and only once, so a shared user synced again
		// meanwhile by other intents cannot keep a poison intent
		// alive.
		res.forget = res.skipped
		if res.intent.attempt == 1 {
			res.outcome = outcomeRetry
			res.delay = retry.backoff(1)
		}
	}
}

// backoff returns the wait after the attempt-th failed attempt: a random
// duration in [d/2, d], d = min(Max, Base*2^(attempt-1)).
func (p RetryPolicy) backoff(attempt int) time.Duration {
	d := p.Max
	if attempt < 40 {
		if exp := p.Base << max(attempt-1, 0); exp > 0 && exp < p.Max {
			d = exp
		}
	}
	return d/2 + rand.N(d/2+1)
}

// worstError picks the error that decides the attempt: auth over permanent
// over rate limited over retryable over anything else.
func worstError(errs []error) error {
	rank := func(err error) int {
		var pe *provider.Error
		if !errors.As(err, &pe) {
			return 1
		}
		switch pe.Kind {
		case provider.Auth:
			return 5
		case provider.Permanent:
			return 4
		case provider.RateLimited:
			return 3
		default:
			return 2
		}
	}
	var worst error
	for _, err := range errs {
		if err != nil && (worst == nil || rank(err) > rank(worst)) {
			worst = err
		}
	}
	return worst
}

func truncate(s string) string {
	if len(s) <= maxErrorLen {
		return s
	}
	// Cut on a rune boundary.
	cut := maxErrorLen
	for cut > 0 && s[cut]&0xC0 == 0x80 {
		cut--
	}
	return s[:cut] + "…"
}
