package relay_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
	"github.com/outbox-relay/outbox-relay/provider/talkjs"
	"github.com/outbox-relay/outbox-relay/relay"
)

// singleUserIntent has one user of its own, so each intent's first call is
// independent of the others'.
func singleUserIntent(conv string, n int) outbox.Intent {
	u := "user-" + conv
	return outbox.Intent{
		Users:        []outbox.User{{ID: u, Name: "User " + conv, Email: []string{u + "@example.com"}}},
		Conversation: outbox.Conversation{ID: conv},
		Messages:     []outbox.Message{{Sender: u, Text: fmt.Sprintf("hello %d", n)}},
	}
}

// An endpoint that accepts calls and never answers, at the default lease
// and client timeout: every call ends as "no answer", is counted as an
// attempt, backs off, opens the breaker, and the retry budget ends in dead
// letters. (It used to be released at the lease's deadline, before the
// client's timeout, with the attempt given back: calls for ever.)
func TestHungEndpointIsCountedAndDeadLettered(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{Hang: true})
	client, err := talkjs.New(talkjs.Config{AppID: testAppID, SecretKey: testSecret, BaseURL: b.url}) // default timeout
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	// Defaults, but a budget of 2 attempts so the test sees it spent.
	cfg := relay.Config{Name: "hung", MaxAttempts: 2, Logger: slogTo(b)}
	// Users PUT one by one, so that the intents' first calls, all made at
	// once, are one call each: a batch users call serving them all would
	// be one failure to the breaker.
	r, err := relay.New(b.pool, singleUserPuts{client}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	const n = relay.DefaultBreakerThreshold // one first call each: enough failures to open the breaker
	var intents []outbox.Intent
	for i := range n {
		intents = append(intents, singleUserIntent(fmt.Sprintf("hung-%d", i), i))
	}
	b.insertSQL(t, intents)
	started := time.Now()
	if err := r.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)

	ctx := t.Context()
	timeout := talkjs.DefaultTimeout
	waitFor(t, timeout+15*time.Second, "the breaker to open", func() bool { return r.Health().Paused == "breaker" })
	opened := time.Since(started)
	waitFor(t, 2*timeout+20*time.Second, "an intent dead after its 2 attempts", func() bool { return b.counts(t)["dead"] > 0 })
	dead := time.Since(started)

	rows, err := b.pool.Query(ctx, `SELECT id, state, attempts, coalesce(last_error, ''),
	        extract(epoch FROM run_after - updated_at)::float8 FROM outbox.intents ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		var state, lastErr string
		var attempts int
		var backoff float64
		if err := rows.Scan(&id, &state, &attempts, &lastErr, &backoff); err != nil {
			t.Fatal(err)
		}
		if attempts < 1 || !strings.Contains(lastErr, "no answer within") {
			t.Errorf("intent %d: %s after %d attempts, last_error %q: want counted attempts saying no answer came", id, state, attempts, lastErr)
		}
		switch state {
		case "dead":
			if attempts != 2 || !strings.Contains(lastErr, "retry budget spent") {
				t.Errorf("dead intent %d: %d attempts, last_error %q", id, attempts, lastErr)
			}
		case "pending":
			// The completion sets both in one statement: their gap is the
			// backoff, at least half of the first one's bound.
			if min := (relay.DefaultRetryBase / 2).Seconds(); backoff < min {
				t.Errorf("pending intent %d due again %.3fs after its failure, want a backoff of at least %.1fs", id, backoff, min)
			}
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	var calls, noAnswer int
	if err := b.pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE outcome = 'retryable' AND error LIKE '%no answer within%')
	                                  FROM outbox.attempts`).Scan(&calls, &noAnswer); err != nil {
		t.Fatal(err)
	}
	if calls == 0 || noAnswer != calls {
		t.Errorf("%d of %d recorded calls are retryable failures saying no answer came", noAnswer, calls)
	}
	if hung := b.fake.Stats().Faults[faketalkjs.FaultHang]; hung < n+1 {
		t.Errorf("the fake held %d calls, want at least %d", hung, n+1)
	}
	t.Logf("%d calls, each ending after %s with no answer; breaker open after %s, first dead letter after %s",
		calls, timeout, opened.Round(100*time.Millisecond), dead.Round(100*time.Millisecond))
}

// OUTBOX_LEASE's minimum (1s) with the longest timeout it allows (500ms)
// delivers: calls get most of the lease (it used to lose a fixed second,
// the whole lease).
func TestDeliversAtMinimumLease(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	client, err := talkjs.New(talkjs.Config{AppID: testAppID, SecretKey: testSecret, BaseURL: b.url,
		Timeout: relay.MaxCallTimeout(relay.MinLease)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	cfg := testConfig("min-lease")
	cfg.Lease = relay.MinLease
	cfg.Logger = slogTo(b)
	r, err := relay.New(b.pool, client, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var intents []outbox.Intent
	for i := range 200 {
		intents = append(intents, orderIntent(fmt.Sprintf("min-lease-%d", i%50), i))
	}
	b.insertSQL(t, intents)
	if err := r.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	c := b.waitSettled(t, 60*time.Second)
	if c["done"] != len(intents) {
		t.Fatalf("states = %v, want %d done", c, len(intents))
	}
	b.checkDelivered(t, intents)
}

// A provider timeout that could outlast the lease is refused at start.
func TestTimeoutLongerThanLeaseRefused(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	client, err := talkjs.New(talkjs.Config{AppID: testAppID, SecretKey: testSecret, BaseURL: b.url, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	_, err = relay.New(b.pool, client, relay.Config{Lease: 10 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "Lease") || !strings.Contains(err.Error(), "timeout") {
		t.Fatalf("relay.New with a 10s timeout under a 10s lease: %v, want an error naming both", err)
	}
}

// unsizedClient is a talkjs.Client that does not report its rate limit,
// so the relay cannot size its claims to it and claims as many intents as
// it has slots: more than the limit serves within the lease.
type unsizedClient struct {
	provider.Provider
	c *talkjs.Client
}

func (u unsizedClient) SetRateLimit(limit float64, burst int) { u.c.SetRateLimit(limit, burst) }
func (u unsizedClient) Timeout() time.Duration                { return u.c.Timeout() }

// limitedConfig is a relay at 3 calls/s under a 4s lease: eight intents'
// first calls queue for up to 2.7s, so a relay that claims all eight has
// the limiter refuse the slots that would leave under 1s (half of the 2s
// call timeout, which leaves room for a slow fake on a loaded machine).
func limitedConfig() relay.Config {
	cfg := testConfig("limited")
	cfg.Lease = 4 * time.Second
	cfg.RateLimit, cfg.RateBurst = 3, 1
	cfg.Retry.Base = 100 * time.Millisecond
	return cfg
}

// deliverEightLimited has r deliver eight single-user intents, checks
// that they all arrived, and returns how many took more than one counted
// attempt.
func deliverEightLimited(t *testing.T, b *bundle, r *relay.Relay) (notFirst int) {
	t.Helper()
	var intents []outbox.Intent
	for i := range 8 {
		intents = append(intents, singleUserIntent(fmt.Sprintf("limited-%d", i), i))
	}
	ids := b.insertSQL(t, intents)
	if err := r.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	if c := b.waitSettled(t, 60*time.Second); c["done"] != len(intents) {
		t.Fatalf("states = %v, want %d done", c, len(intents))
	}
	b.checkDelivered(t, intents)
	if err := b.pool.QueryRow(t.Context(), `SELECT count(*) FROM outbox.intents WHERE id = ANY($1) AND attempts <> 1`, ids).Scan(&notFirst); err != nil {
		t.Fatal(err)
	}
	return notFirst
}

// limiterRefusals counts the attempts the client's own limiter refused.
func limiterRefusals(t *testing.T, b *bundle) int {
	t.Helper()
	var refused int
	if err := b.pool.QueryRow(t.Context(), `SELECT count(*) FROM outbox.attempts
	                                 WHERE outcome = 'rate_limited' AND status IS NULL AND error LIKE '%client-side rate limit%'`).Scan(&refused); err != nil {
		t.Fatal(err)
	}
	return refused
}

// The relay claims no more intents than its rate limit serves within half
// a lease: behind a limit of 3 calls/s and a 4s lease, the eight intents
// are delivered without the client's limiter refusing one call (a relay
// that claims all eight at once has it refuse several: the next test).
func TestClaimsSizedToTheRateLimit(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	r := b.newRelay(t, limitedConfig())
	notFirst := deliverEightLimited(t, b, r)
	if refused := limiterRefusals(t, b); refused != 0 {
		t.Errorf("the client's limiter refused %d calls: the relay claimed more than the limit serves within the lease", refused)
	}
	if notFirst != 0 {
		t.Errorf("%d intents took more than one attempt", notFirst)
	}
}

// A call the relay's own rate limiter cannot serve in time goes back to
// pending alone: its attempt is given back, nothing is dead, every intent
// is delivered, and no relay-wide pause follows (no call waits for it).
// The provider hides its rate limit, so the relay claims all eight
// intents at once.
func TestClientLimiterRefusalReleasesOneIntent(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	cfg := limitedConfig()
	cfg.Logger = slogTo(b)
	c := b.clientWithTimeout(t, relay.MaxCallTimeout(cfg.Lease))
	r, err := relay.New(b.pool, unsizedClient{Provider: c, c: c}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	notFirst := deliverEightLimited(t, b, r)
	refused := limiterRefusals(t, b)
	if refused == 0 {
		t.Fatal("the client's limiter refused no call: the test did not exercise it")
	}
	// Each intent's attempts count only its real attempts: one, as no
	// call failed.
	if notFirst != 0 {
		t.Errorf("%d intents count a refused call as an attempt", notFirst)
	}
	if strings.Contains(b.logs.String(), "circuit open") || strings.Contains(b.logs.String(), "refused the credentials") {
		t.Errorf("a client-side refusal paused the relay:\n%s", b.logs.String())
	}
	t.Logf("%d calls refused by the client's limiter and their intents sent back alone", refused)
}

// singleUserPuts is a client without the batch users call: users are PUT
// one by one. It keeps the client's own call timeout.
type singleUserPuts struct{ c *talkjs.Client }

func (p singleUserPuts) PutUser(ctx context.Context, u provider.User) error {
	return p.c.PutUser(ctx, u)
}
func (p singleUserPuts) PutConversation(ctx context.Context, c provider.Conversation) error {
	return p.c.PutConversation(ctx, c)
}
func (p singleUserPuts) PostMessages(ctx context.Context, id string, msgs []provider.Message) error {
	return p.c.PostMessages(ctx, id, msgs)
}
func (p singleUserPuts) Timeout() time.Duration { return p.c.Timeout() }
