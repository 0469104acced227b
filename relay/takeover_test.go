package relay_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
	"github.com/outbox-relay/outbox-relay/provider/talkjs"
	"github.com/outbox-relay/outbox-relay/relay"
)

// clientWithTimeout is a client for the bundle's fake with its own timeout.
func (b *bundle) clientWithTimeout(t testing.TB, timeout time.Duration) *talkjs.Client {
	t.Helper()
	c, err := talkjs.New(talkjs.Config{AppID: testAppID, SecretKey: testSecret, BaseURL: b.url, Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// newRelay makes a relay on the bundle's database and fake, its provider
// timeout the longest its lease allows; it is stopped when the test ends.
func (b *bundle) newRelay(t testing.TB, cfg relay.Config) *relay.Relay {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slogTo(b)
	}
	r, err := relay.New(b.pool, b.clientWithTimeout(t, relay.MaxCallTimeout(cmpOr(cfg.Lease, relay.DefaultLease))), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	return r
}

func cmpOr(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// ghostClaim leases an intent to a relay that will never renew nor finish
// (a crashed or frozen one) for lease, recording attempts attempts, and
// returns when the lease ends by the database clock.
func (b *bundle) ghostClaim(t testing.TB, id int64, lease time.Duration, attempts int) time.Time {
	t.Helper()
	var expires time.Time
	err := b.pool.QueryRow(t.Context(), `
UPDATE outbox.intents
   SET state = 'delivering', lease_owner = 'ghost', lease_expires_at = now() + $2::interval,
       lease_token = lease_token + 1, attempts = $3
 WHERE id = $1
RETURNING lease_expires_at`, id, lease, attempts).Scan(&expires)
	if err != nil {
		t.Fatal(err)
	}
	return expires
}

// doneAt returns when an intent was done, by the database clock.
func (b *bundle) doneAt(t testing.TB, id int64) (time.Time, bool) {
	t.Helper()
	var at *time.Time
	if err := b.pool.QueryRow(t.Context(), `SELECT done_at FROM outbox.intents WHERE id = $1`, id).Scan(&at); err != nil {
		t.Fatal(err)
	}
	if at == nil {
		return time.Time{}, false
	}
	return *at, true
}

// A crashed relay's intent is taken over and delivered within lease + one
// sweep (+ the delivery), even after several lost attempts, by a relay
// whose poll would come much later. (It used to wait a second per attempt
// already made, plus a poll.)
func TestTakeoverWithinLeaseAndOneSweep(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	const lease = 2 * time.Second
	const sweep = lease / 10
	ids := b.insertSQL(t, []outbox.Intent{orderIntent("orphan", 1)})
	expires := b.ghostClaim(t, ids[0], lease, 3)

	cfg := testConfig("heir")
	cfg.Lease = lease
	cfg.PollInterval = time.Minute // only a wake-up can make the bound
	r := b.newRelay(t, cfg)
	if err := r.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	const slack = time.Second // the claim, four calls and the completion
	waitFor(t, time.Until(expires)+sweep+slack, "the orphan taken over and done", func() bool {
		_, ok := b.doneAt(t, ids[0])
		return ok
	})
	done, _ := b.doneAt(t, ids[0])
	t.Logf("done %s after the lease ended (bound: one sweep %s + %s)", done.Sub(expires).Round(time.Millisecond), sweep, slack)
}

// The relay whose sweep takes an intent back wakes the others: one with
// free slots claims it at once instead of at its next poll.
func TestTakeoverWakesOtherRelays(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	ids := b.insertSQL(t, []outbox.Intent{orderIntent("woken", 1)})
	expires := b.ghostClaim(t, ids[0], time.Second, 1)

	idle := testConfig("idle")
	idle.PollInterval = time.Minute
	r := b.newRelay(t, idle)
	if err := r.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	// The idle relay's own sweep (every second) would take the intent back
	// and claim it without any wake-up, and on a busy host it did so
	// before this test's sweeper could: only a wake-up may bring it here.
	if err := r.StopSweeper(t.Context()); err != nil {
		t.Fatal(err)
	}
	// Another relay (not delivering: it only sweeps) takes the intent
	// back once its lease has ended by the database clock.
	sweeper := b.newRelay(t, testConfig("sweeper"))
	waitFor(t, time.Until(expires)+5*time.Second, "the ghost's lease to end", func() bool {
		var ended bool
		err := b.pool.QueryRow(t.Context(), `SELECT $1 < now()`, expires).Scan(&ended)
		return err == nil && ended
	})
	swept := time.Now()
	sweeper.ExpireLeases(t.Context())
	// Well before the idle relay's next poll.
	waitFor(t, idle.PollInterval/3, "the idle relay to claim and deliver the intent taken back", func() bool {
		_, ok := b.doneAt(t, ids[0])
		return ok
	})
	t.Logf("delivered %s after the other relay's sweep", time.Since(swept).Round(time.Millisecond))
}

// A frozen relay's intent whose lease ends with its retry budget spent
// stays in the way of its conversation's next intent until a call the
// frozen relay sent before its lease ended could no longer land: the late
// message is stored before the successor's. (The sweep used to make it
// dead at once, and the successor's messages went first.)
func TestSuccessorWaitsForExpiredHoldersLateCalls(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	ctx := t.Context()
	const lease = 2 * time.Second
	callTimeout := relay.MaxCallTimeout(lease)
	head, next := orderIntent("late", 1), orderIntent("late", 2)
	ids := b.insertSQL(t, []outbox.Intent{head, next})
	// The frozen relay had made the head's PUTs; its messages POST is in
	// flight, on its last attempt.
	ghost := b.clientWithTimeout(t, callTimeout)
	for _, u := range head.Users {
		if err := ghost.PutUser(ctx, provider.User{ID: u.ID, Name: u.Name, Email: u.Email}); err != nil {
			t.Fatal(err)
		}
	}
	if err := ghost.PutConversation(ctx, provider.Conversation{ID: "late", Participants: head.ResolvedParticipants()}); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig("successor")
	cfg.Lease = lease
	cfg.MaxAttempts = 3
	expires := b.ghostClaim(t, ids[0], time.Second, cfg.MaxAttempts)
	r := b.newRelay(t, cfg)
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// The late POST lands half the longest call after the lease ended: the
	// lease expires on the real clock, and the moment is what is tested.
	time.Sleep(time.Until(expires.Add(callTimeout / 2)))
	var late []provider.Message
	for i, m := range head.Messages {
		late = append(late, provider.Message{Text: m.Text, Sender: m.Sender, Type: m.ResolvedType(), IdempotencyKey: fmt.Sprint("ghost-", i)})
	}
	if err := ghost.PostMessages(ctx, "late", late); err != nil {
		t.Fatal(err)
	}
	landed := time.Now()

	waitFor(t, time.Until(expires)+callTimeout+10*time.Second, "the successor done", func() bool {
		_, ok := b.doneAt(t, ids[1])
		return ok
	})
	var state string
	var deadAt, firstCall time.Time
	if err := b.pool.QueryRow(ctx, `SELECT state, updated_at FROM outbox.intents WHERE id = $1`, ids[0]).Scan(&state, &deadAt); err != nil {
		t.Fatal(err)
	}
	if err := b.pool.QueryRow(ctx, `SELECT min(started_at) FROM outbox.attempts WHERE intent_id = $1`, ids[1]).Scan(&firstCall); err != nil {
		t.Fatal(err)
	}
	if state != "dead" {
		t.Errorf("head is %s, want dead (budget spent)", state)
	}
	if deadAt.Before(expires.Add(callTimeout)) {
		t.Errorf("head made dead %s after its lease ended, before the longest call (%s) had passed", deadAt.Sub(expires).Round(time.Millisecond), callTimeout)
	}
	msgs := b.fake.Messages("late")
	var texts []string
	for _, m := range msgs {
		texts = append(texts, m.Text)
	}
	want := []string{head.Messages[0].Text, head.Messages[1].Text, next.Messages[0].Text, next.Messages[1].Text}
	if fmt.Sprint(texts) != fmt.Sprint(want) {
		t.Errorf("messages %q, want %q: the successor overtook the frozen relay's late call", texts, want)
	}
	t.Logf("late call landed %s after the lease ended; head dead after %s, successor's first call after %s",
		landed.Sub(expires).Round(time.Millisecond), deadAt.Sub(expires).Round(time.Millisecond), firstCall.Sub(expires).Round(time.Millisecond))
}
