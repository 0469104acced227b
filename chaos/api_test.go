package chaos_test

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
	"github.com/outbox-relay/outbox-relay/relay"
)

// Probe schedule of the circuit breaker (relay/gate.go): the first probe
// 1s after it opens, then doubling up to 30s.
const (
	firstProbe = time.Second
	maxProbe   = 30 * time.Second
)

// probesWithin returns how many probes the breaker may send in d after
// opening, and the probe interval in force at d.
func probesWithin(d time.Duration) (probes int, interval time.Duration) {
	var at time.Duration
	interval = firstProbe
	for at+interval <= d {
		at += interval
		probes++
		interval = min(2*interval, maxProbe)
	}
	return probes, interval
}

// Fault 4, API outage. Mid-run the API goes away for the outage length:
// first the fake closes every connection unanswered, then its port refuses
// connections. No intent goes dead (the outage is shorter than the retry
// budget); the circuit breaker opens and, while open, the relay makes at
// most one probe per backoff interval (counted from the attempts the relay
// records, and from the fake's side while it is reachable), not one
// failing call per pending intent; delivery resumes within one probe
// interval of the API's return, and every message arrives once.
func TestAPIOutage(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{Latency: 30 * time.Millisecond})
	cfg := fastRetry("outage-relay")
	cfg.Concurrency = 20
	cfg.BatchSize = 10
	cfg.Retry.Base = 100 * time.Millisecond
	r := b.startRelay(t, nil, cfg, 2*time.Second)
	n, outage := params.outageIntents, params.outage
	intents := orderIntents("outage", n, max(1, n/4))
	insertChunks(t, b.pool, intents, 1000)
	waitUntil(t, 30*time.Second, "delivery under way", func() bool { return countDone(b.pool) >= n/10 })

	pendingAtStart := queryInt(t, b.pool, `SELECT count(*) FROM outbox.intents WHERE state IN ('pending', 'delivering')`)
	start := time.Now()
	b.fake.SetFaults(faketalkjs.Faults{Latency: 30 * time.Millisecond, Down: true})
	// The breaker should open within a few failed calls; if it does not,
	// the call counts below show what that costs.
	_, breakerOpened := relaytest.Poll(outage/2, func() bool { return r.Health().Paused == "breaker" })
	openedAt := time.Now()
	opened := openedAt.Sub(start)
	if !breakerOpened {
		t.Errorf("the circuit breaker did not open within %s of the outage", outage/2)
	}

	// First half: connections closed unanswered. Second half: refused.
	halfway := time.NewTimer(max(0, outage/2-time.Since(start)))
	<-halfway.C
	downCalls := b.fake.Stats().Faults[faketalkjs.FaultDown]
	b.api.Close()
	b.fake.SetFaults(faketalkjs.Faults{Latency: 30 * time.Millisecond})
	end := time.NewTimer(max(0, outage-time.Since(start)))
	<-end.C
	if c := counts(t, b.pool); c["dead"] != 0 {
		t.Errorf("%d intents dead during a %s outage", c["dead"], outage)
	}
	b.api.Reopen(t)
	recovered := time.Now()

	probes, interval := probesWithin(recovered.Sub(openedAt))
	resumeBound := interval + 3*time.Second
	doneAtRecovery := countDone(b.pool)
	resume := waitUntil(t, resumeBound, "delivery to resume after the outage", func() bool {
		return countDone(b.pool) > doneAtRecovery
	})
	c := waitSettled(t, b.pool, 2*time.Minute)
	if c["dead"] != 0 {
		t.Errorf("%d intents dead after a %s outage", c["dead"], outage)
	}
	lost, dup := checkExactlyOnce(t, b, intents)

	// Every call is recorded in outbox.attempts (skipped user PUTs aside),
	// a batch users call once per intent and user it served, under one
	// call_id.
	calls := func(from, to time.Time) int {
		return queryInt(t, b.pool, `SELECT count(DISTINCT coalesce(call_id::text, id::text)) FROM outbox.attempts
			WHERE outcome <> 'skipped' AND started_at >= $1 AND started_at < $2`, from, to)
	}
	total, whileOpen := calls(start, recovered), calls(openedAt, recovered)
	// A probe is one intent: at most its two user PUTs (sent together)
	// fail. Slack of 4 for calls that passed the breaker as it opened.
	maxWhileOpen := 2*(probes+1) + 4
	if whileOpen > maxWhileOpen {
		t.Errorf("%d calls while the breaker was open for %s, want at most %d (%d probe intervals)",
			whileOpen, recovered.Sub(openedAt).Round(time.Millisecond), maxWhileOpen, probes)
	}
	if total >= pendingAtStart {
		t.Errorf("%d calls during the outage for %d pending intents: not throttled", total, pendingAtStart)
	}
	maxAttempts := queryInt(t, b.pool, `SELECT max(attempts) FROM outbox.intents`)
	t.Logf("figures: intents=%d outage=%s pending_at_outage=%d breaker_open_after=%s calls_during_outage=%d "+
		"calls_while_open=%d (allowed %d: %d probe intervals) calls_seen_by_fake_while_closing_connections=%d "+
		"max_attempts_of_an_intent=%d dead=0 resumed_after_recovery=%s (bound %s) lost=%d duplicates=%d",
		n, outage, pendingAtStart, opened.Round(time.Millisecond), total, whileOpen, maxWhileOpen, probes, downCalls,
		maxAttempts, resume.Round(10*time.Millisecond), resumeBound, lost, dup)
}

// applyThenHang answers a fraction of the API calls only after applying
// them and after the client has given up: a client timeout on a call the
// server applied.
type applyThenHang struct {
	next http.Handler
	p    float64
	mu   sync.Mutex
	rng  *rand.Rand
	hung atomic.Int64
}

func (h *applyThenHang) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	hang := strings.HasPrefix(r.URL.Path, "/v1/") && h.rng.Float64() < h.p
	h.mu.Unlock()
	if !hang {
		h.next.ServeHTTP(w, r)
		return
	}
	rec := httptest.NewRecorder()
	h.next.ServeHTTP(rec, r)
	if rec.Code != http.StatusOK {
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
		return
	}
	h.hung.Add(1)
	select {
	case <-r.Context().Done(): // the client timed out and hung up
	case <-time.After(time.Minute):
	}
}

// Fault 5, ambiguous failures. About 20% of calls fail after the API
// applied them: a 500 after processing, a connection closed without an
// answer, or no answer before the client's timeout. The relay retries them
// all (at-least-once calls) and the idempotency keys make the messages
// effectively once: 0 duplicates, 0 lost, order kept.
func TestAmbiguousFailures(t *testing.T) {
	t.Parallel()
	const each = 0.07 // per kind; about 20% of calls in all
	pool, dbURL := pgtest.NewPool(t)
	fake := faketalkjs.New(faketalkjs.Config{AppID: appID, SecretKey: secret, Seed: 5,
		Faults: faketalkjs.Faults{FailAfter: each, DropAfter: each}})
	hang := &applyThenHang{next: fake, p: each, rng: rand.New(rand.NewPCG(5, 5))}
	b := &bench{pool: pool, dbURL: dbURL, fake: fake, api: serveAPI(t, hang)}

	n := params.ambiguousIntents
	intents := orderIntents("ambiguous", n, max(1, n/4))
	for i := range 2 {
		cfg := fastRetry(fmt.Sprintf("ambiguous-r%d", i))
		cfg.Concurrency = 20
		cfg.Retry = relay.RetryPolicy{Base: 20 * time.Millisecond, Max: 200 * time.Millisecond}
		b.startRelay(t, nil, cfg, 500*time.Millisecond)
	}
	insertChunks(t, b.pool, intents, 1000)
	c := waitSettled(t, b.pool, 3*time.Minute)
	if c["dead"] != 0 {
		t.Errorf("%d intents dead", c["dead"])
	}
	st := b.fake.Stats()
	failAfter, dropAfter, hung := st.Faults[faketalkjs.FaultFailAfter], st.Faults[faketalkjs.FaultDropAfter], hang.hung.Load()
	if failAfter == 0 || dropAfter == 0 || hung == 0 {
		t.Fatalf("faults injected: 500-after %d, dropped %d, timed out %d; want some of each", failAfter, dropAfter, hung)
	}
	if st.DuplicatesSuppressed == 0 {
		t.Error("no message post was retried after being applied: the test did not exercise idempotency keys")
	}
	lost, dup := checkExactlyOnce(t, b, intents)
	ambiguous := failAfter + dropAfter + hung
	t.Logf("figures: intents=%d api_requests=%d ambiguous_failures=%d (%.1f%%: 500_after_apply=%d dropped_after_apply=%d "+
		"timed_out_after_apply=%d) duplicate_posts_suppressed_by_idempotency_key=%d lost=%d duplicates=%d",
		n, st.Requests, ambiguous, 100*float64(ambiguous)/float64(st.Requests), failAfter, dropAfter, hung,
		st.DuplicatesSuppressed, lost, dup)
}

// Fault 6, rate limiting, with the relays' shared limit below the API's:
// three relays split the app's budget through their heartbeats, so 429s
// stay under 1% of calls.
func TestRateLimitBelowAPILimit(t *testing.T) {
	t.Parallel()
	st, n := runRateLimited(t, 80)
	ratio := float64(st.Statuses[http.StatusTooManyRequests]) / float64(st.Requests)
	if ratio >= 0.01 {
		t.Errorf("429s are %.2f%% of %d calls, want under 1%%", 100*ratio, st.Requests)
	}
	t.Logf("figures: intents=%d relays=3 api_limit=100/s relays_limit=80/s calls=%d 429s=%d (%.2f%%) dead=0",
		n, st.Requests, st.Statuses[http.StatusTooManyRequests], 100*ratio)
}

// Fault 6, rate limiting, with the relays' limit set above the API's: the
// relays meet 429s, honour Retry-After (relay-wide), and still finish with
// nothing dead and nothing duplicated.
func TestRateLimitAboveAPILimit(t *testing.T) {
	t.Parallel()
	st, n := runRateLimited(t, 300)
	limited := st.Statuses[http.StatusTooManyRequests]
	ratio := float64(limited) / float64(st.Requests)
	if limited == 0 {
		t.Error("no 429: the relays did not exceed the API's limit")
	}
	// Relays ignoring Retry-After would send at 300/s to a 100/s API: about
	// two calls in three refused.
	if ratio > 0.40 {
		t.Errorf("429s are %.1f%% of %d calls: Retry-After not honoured", 100*ratio, st.Requests)
	}
	t.Logf("figures: intents=%d relays=3 api_limit=100/s relays_limit=300/s calls=%d 429s=%d (%.1f%%) dead=0",
		n, st.Requests, limited, 100*ratio)
}

// runRateLimited delivers intents through three relays sharing limit
// requests/s, against a fake limiting the app to 100 requests/s (burst 100).
func runRateLimited(t *testing.T, limit float64) (faketalkjs.Stats, int) {
	t.Helper()
	b := setup(t, faketalkjs.Faults{RateLimit: 100, Burst: 100})
	var relays []*inProcess
	for i := range 3 {
		cfg := fastRetry(fmt.Sprintf("rate-r%d", i))
		cfg.RateLimit = limit
		cfg.Lease = 3 * time.Second // heartbeats every second
		cfg.Concurrency = 20
		relays = append(relays, b.startRelay(t, nil, cfg, relay.MaxCallTimeout(cfg.Lease)))
	}
	waitUntil(t, 15*time.Second, "each relay to count three live relays", func() bool {
		for _, r := range relays {
			if r.metric(t, "outbox_relay_live_relays") != 3 {
				return false
			}
		}
		return true
	})
	n := params.rateIntents
	intents := orderIntents("rate", n, max(1, n/3))
	insertChunks(t, b.pool, intents, 1000)
	c := waitSettled(t, b.pool, 3*time.Minute)
	if c["dead"] != 0 {
		t.Errorf("%d intents dead", c["dead"])
	}
	checkExactlyOnce(t, b, intents)
	return b.fake.Stats(), n
}

// Fault 7, poison intents. Intents the API refuses for good (a user it
// rejects with 400, a conversation id no URL can carry) go dead at once
// with the error stored, and the rest of the queue, including a later
// intent of a poisoned conversation, is delivered.
func TestPoisonIntents(t *testing.T) {
	t.Parallel()
	n := params.poisonIntents
	var rejected []string
	var good, poison []outbox.Intent
	var all []outbox.Intent
	seller := outbox.User{ID: "seller", Name: "Seller", Email: []string{"seller@example.com"}, Role: "seller"}
	for i, in := range orderIntents("good", n, max(1, n/3)) {
		all = append(all, in)
		good = append(good, in)
		if i%30 == 5 {
			conv := fmt.Sprintf("poison-%d", i)
			p := orderIntents(conv, 1, 1)[0]
			rejected = append(rejected, p.Users[0].ID)
			// A later intent of the same conversation, without the bad user.
			next := outbox.Intent{Users: []outbox.User{seller},
				Conversation: outbox.Conversation{ID: p.Conversation.ID, Subject: p.Conversation.Subject},
				Messages:     []outbox.Message{{Sender: "seller", Text: "after the poison " + conv}}}
			// An id TalkJS cannot take in a URL path.
			dot := outbox.Intent{Users: []outbox.User{seller}, Conversation: outbox.Conversation{ID: "."},
				Messages: []outbox.Message{{Type: outbox.SystemMessage, Text: "never"}}}
			if len(poison) > 0 {
				dot.Conversation.ID = ".."
			}
			all = append(all, p, next)
			good = append(good, next)
			poison = append(poison, p)
			if len(poison) <= 2 {
				all = append(all, dot)
				poison = append(poison, dot)
			}
		}
	}
	b := setup(t, faketalkjs.Faults{RejectUserIDs: rejected})
	insertChunks(t, b.pool, all, 1000)
	cfg := fastRetry("poison-relay")
	cfg.Concurrency = 20
	start := time.Now()
	b.startRelay(t, nil, cfg, 5*time.Second)

	c := waitSettled(t, b.pool, 3*time.Minute)
	allDone := time.Since(start)
	if c["dead"] != len(poison) || c["done"] != len(good) {
		t.Errorf("states = %v, want %d dead and %d done", c, len(poison), len(good))
	}
	ctx := t.Context()
	// How long each poison intent took from its first call to dead.
	rows, err := b.pool.Query(ctx, `
SELECT i.conversation_id, i.attempts, coalesce(i.last_error, ''),
       extract(epoch FROM i.updated_at - (SELECT min(a.started_at) FROM outbox.attempts a WHERE a.intent_id = i.id))
  FROM outbox.intents i
 WHERE i.state = 'dead'`)
	if err != nil {
		t.Fatal(err)
	}
	maxAttempts := 0
	var slowest time.Duration
	const deadBound = 5 * time.Second
	for rows.Next() {
		var conv, lastError string
		var attempts int
		var secs float64
		if err := rows.Scan(&conv, &attempts, &lastError, &secs); err != nil {
			t.Fatal(err)
		}
		took := time.Duration(secs * float64(time.Second))
		slowest = max(slowest, took)
		if took > deadBound {
			t.Errorf("poison intent of %q went dead %s after its first call, want within %s", conv, took, deadBound)
		}
		maxAttempts = max(maxAttempts, attempts)
		// One more attempt is allowed when a skipped user PUT may be the cause.
		if attempts > 2 {
			t.Errorf("poison intent of %q went dead after %d attempts, want at most 2", conv, attempts)
		}
		want := "400"
		if conv == "." || conv == ".." {
			want = "cannot be used in a URL path"
		}
		if !strings.Contains(lastError, want) {
			t.Errorf("poison intent of %q: last_error %q does not say %q", conv, lastError, want)
		}
	}
	rows.Close()
	// The intent after a poisoned one in its conversation waited for it to
	// be dead, then went through.
	if n := queryInt(t, b.pool, `
SELECT count(*) FROM outbox.intents later JOIN outbox.intents earlier
    ON earlier.conversation_id = later.conversation_id AND earlier.id < later.id
 WHERE earlier.state = 'dead' AND later.state = 'done' AND later.done_at < earlier.updated_at`); n != 0 {
		t.Errorf("%d intents were delivered before the poisoned intent ahead of them was settled", n)
	}
	lost, dup := checkExactlyOnce(t, b, good)
	t.Logf("figures: intents=%d poison=%d dead=%d max_attempts_of_poison=%d first_call_to_dead_max=%s (bound %s) queue_drained_after=%s lost=%d duplicates=%d",
		len(all), len(poison), c["dead"], maxAttempts, slowest.Round(time.Millisecond), deadBound, allDone.Round(10*time.Millisecond), lost, dup)
}
