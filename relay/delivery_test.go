package relay_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
	"github.com/outbox-relay/outbox-relay/relay"
)

// 1,000 intents inserted with plain SQL are all delivered: the fake holds
// exactly their users, conversations and messages, each message once and
// never before its conversation and sender existed.
func TestDeliversIntentsInsertedWithSQL(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	var intents []outbox.Intent
	for i := range 1000 {
		intents = append(intents, orderIntent(fmt.Sprintf("conv-%d", i%300), i))
	}
	b.insertSQL(t, intents)
	b.startRelay(t, testConfig("r1"), testSecret)

	c := b.waitSettled(t, 60*time.Second)
	if c["done"] != 1000 {
		t.Fatalf("states = %v, want 1000 done", c)
	}
	b.checkDelivered(t, intents)
	if st := b.fake.Stats(); st.Rejections != 0 {
		t.Errorf("fake rejected %d requests (statuses %v), want none", st.Rejections, st.Statuses)
	}
	// Every request the fake saw is recorded. A call the fake answered
	// after the relay stopped waiting (a loaded machine) is recorded as
	// failed, not ok, so: ok calls <= requests <= calls made.
	var ok, made int64
	// The rows of one batch call share its call_id.
	if err := b.pool.QueryRow(t.Context(), `SELECT count(DISTINCT coalesce(call_id::text, id::text)) FILTER (WHERE outcome = 'ok'),
	                                                        count(DISTINCT coalesce(call_id::text, id::text)) FILTER (WHERE outcome <> 'skipped')
	                                                   FROM outbox.attempts`).Scan(&ok, &made); err != nil {
		t.Fatal(err)
	}
	if reqs := b.fake.Stats().Requests; ok > reqs || reqs > made {
		t.Errorf("attempts table records %d successful calls of %d made, the fake saw %d requests", ok, made, reqs)
	}
}

// Three relays on 2,000 intents: each message stored exactly once, and
// every conversation's messages in insertion order.
func TestThreeRelaysDeliverOnceInOrder(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	for i := range 3 {
		cfg := testConfig(fmt.Sprintf("r%d", i))
		cfg.Concurrency = 20
		cfg.BatchSize = 10
		b.startRelay(t, cfg, testSecret)
	}
	var intents []outbox.Intent
	for batch := range 20 {
		var chunk []outbox.Intent
		for i := range 100 {
			n := batch*100 + i
			chunk = append(chunk, orderIntent(fmt.Sprintf("conv-%d", n%100), n))
		}
		b.insertSQL(t, chunk)
		intents = append(intents, chunk...)
	}
	c := b.waitSettled(t, 120*time.Second)
	if c["done"] != 2000 {
		t.Fatalf("states = %v, want 2000 done", c)
	}
	b.checkDelivered(t, intents)

	var relays int
	if err := b.pool.QueryRow(t.Context(),
		`SELECT count(DISTINCT relay) FROM outbox.attempts`).Scan(&relays); err != nil {
		t.Fatal(err)
	}
	if relays != 3 {
		t.Errorf("%d relays made calls, want all 3 to share the work", relays)
	}
}

// Calls that the API applied but whose answer was lost (500 after
// processing, dropped connections) are retried without duplicating any
// message: the idempotency keys hold across retries.
func TestAmbiguousFailuresDoNotDuplicate(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{FailAfter: 0.1, DropAfter: 0.1})
	var intents []outbox.Intent
	for i := range 300 {
		intents = append(intents, orderIntent(fmt.Sprintf("conv-%d", i%50), i))
	}
	b.insertSQL(t, intents)
	b.startRelay(t, testConfig("r1"), testSecret)

	c := b.waitSettled(t, 90*time.Second)
	if c["done"] != 300 {
		t.Fatalf("states = %v, want 300 done", c)
	}
	st := b.fake.Stats()
	if st.Faults[faketalkjs.FaultFailAfter] == 0 || st.Faults[faketalkjs.FaultDropAfter] == 0 {
		t.Fatalf("no faults injected: %v", st.Faults)
	}
	if st.DuplicatesSuppressed == 0 {
		t.Errorf("no duplicate message posts suppressed: the test did not exercise a lost message response")
	}
	b.checkDelivered(t, intents)
	t.Logf("faults injected %v; duplicate posts suppressed by idempotencyKey: %d", st.Faults, st.DuplicatesSuppressed)
}

// A 400 for one intent makes it dead with the error stored; the others,
// including later intents of other conversations, are delivered.
func TestPermanentErrorDeadLettersOnlyThatIntent(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{RejectUserIDs: []string{"buyer-poison"}})
	var intents []outbox.Intent
	for i := range 20 {
		conv := fmt.Sprintf("conv-%d", i)
		if i == 5 {
			conv = "poison"
		}
		intents = append(intents, orderIntent(conv, i))
	}
	ids := b.insertSQL(t, intents)
	b.startRelay(t, testConfig("r1"), testSecret)

	c := b.waitSettled(t, 30*time.Second)
	if c["done"] != 19 || c["dead"] != 1 {
		t.Fatalf("states = %v, want 19 done and 1 dead", c)
	}
	var state, lastErr string
	var attempts int
	if err := b.pool.QueryRow(t.Context(),
		`SELECT state, attempts, last_error FROM outbox.intents WHERE id = $1`, ids[5]).Scan(&state, &attempts, &lastErr); err != nil {
		t.Fatal(err)
	}
	if state != "dead" || attempts != 1 {
		t.Errorf("poison intent: state %s after %d attempts, want dead after 1", state, attempts)
	}
	if !strings.Contains(lastErr, "400") || !strings.Contains(lastErr, "user") {
		t.Errorf("last_error = %q, want the 400 of the user step", lastErr)
	}
	var recorded int
	if err := b.pool.QueryRow(t.Context(),
		`SELECT count(*) FROM outbox.attempts WHERE intent_id = $1 AND step = 'user' AND target = 'buyer-poison' AND status = 400 AND outcome = 'permanent'`,
		ids[5]).Scan(&recorded); err != nil {
		t.Fatal(err)
	}
	if recorded != 1 {
		t.Errorf("recorded %d permanent 400 attempts for the poison intent, want 1", recorded)
	}
	if msgs := b.fake.Messages("poison"); len(msgs) != 0 {
		t.Errorf("poison conversation got %d messages, want none", len(msgs))
	}
}

// Two producers whose transactions overlap on one conversation: delivery
// follows commit order. B starts first but inserts its intent after A did,
// so it waits for A's commit; A's intents are delivered before B's.
func TestOverlappingProducersDeliverInCommitOrder(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	b.startRelay(t, testConfig("r1"), testSecret)
	ctx := t.Context()

	txB, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer txB.Rollback(ctx) //nolint:errcheck // after Commit a no-op; a failed test ends the transaction either way
	var bPID int
	if err := txB.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&bPID); err != nil {
		t.Fatal(err)
	}

	txA, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer txA.Rollback(ctx) //nolint:errcheck // after Commit a no-op; a failed test ends the transaction either way
	if _, err := outbox.Enqueue(ctx, txA, withText(orderIntent("shared", 1), "A1")); err != nil {
		t.Fatal(err)
	}

	bDone := make(chan error, 1)
	go func() {
		_, err := outbox.Enqueue(ctx, txB, withText(orderIntent("shared", 2), "B1"))
		if err == nil {
			err = txB.Commit(ctx)
		}
		bDone <- err
	}()
	// B must be waiting on A's per-conversation order lock.
	waitFor(t, 10*time.Second, "producer B to wait on the conversation lock", func() bool {
		var waiting bool
		err := b.pool.QueryRow(ctx,
			`SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = $1 AND locktype = 'advisory' AND NOT granted)`, bPID).Scan(&waiting)
		return err == nil && waiting
	})
	if _, err := outbox.Enqueue(ctx, txA, withText(orderIntent("shared", 3), "A2")); err != nil {
		t.Fatal(err)
	}
	if err := txA.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-bDone; err != nil {
		t.Fatal(err)
	}
	b.waitSettled(t, 30*time.Second)
	var got []string
	for _, m := range b.fake.Messages("shared") {
		if m.Sender != "" {
			got = append(got, m.Text)
		}
	}
	if want := []string{"A1", "A2", "B1"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("delivery order %q, want commit order %q", got, want)
	}
}

func withText(in outbox.Intent, text string) outbox.Intent {
	in.Messages = in.Messages[1:]
	in.Messages[0].Text = text
	return in
}

// A later intent of a conversation waits while an earlier one is retrying
// (backoff included), and goes ahead once the earlier one is dead.
func TestSuccessorWaitsForPredecessor(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{RejectUserIDs: []string{"buyer-blocked"}})
	ctx := t.Context()
	first := orderIntent("blocked", 1)
	second := orderIntent("blocked", 2)
	second.Users = second.Users[1:] // only the seller: deliverable
	second.Messages = second.Messages[:1]
	ids := b.insertSQL(t, []outbox.Intent{first, second})

	// Make the first one fail retryably for a while: the fake answers 500
	// to everything at first.
	b.fake.SetFaults(faketalkjs.Faults{FailBefore: 1, RejectUserIDs: []string{"buyer-blocked"}})
	cfg := testConfig("r1")
	cfg.MaxAttempts = 1000
	cfg.BreakerThreshold = 1 << 30
	b.startRelay(t, cfg, testSecret)
	waitFor(t, 10*time.Second, "the first intent to fail a few times", func() bool {
		var attempts int
		err := b.pool.QueryRow(ctx, `SELECT attempts FROM outbox.intents WHERE id = $1`, ids[0]).Scan(&attempts)
		return err == nil && attempts >= 3
	})
	var secondAttempts int
	if err := b.pool.QueryRow(ctx, `SELECT attempts FROM outbox.intents WHERE id = $1`, ids[1]).Scan(&secondAttempts); err != nil {
		t.Fatal(err)
	}
	if secondAttempts != 0 {
		t.Fatalf("the second intent was attempted %d times while the first was still retrying", secondAttempts)
	}
	// Now the API answers, rejecting the first intent's user: it goes dead
	// and the second is delivered.
	b.fake.SetFaults(faketalkjs.Faults{RejectUserIDs: []string{"buyer-blocked"}})
	c := b.waitSettled(t, 30*time.Second)
	if c["dead"] != 1 || c["done"] != 1 {
		t.Fatalf("states = %v, want 1 dead and 1 done", c)
	}
}

// An idle relay is woken by the producer's NOTIFY: with polling set to an
// hour, only the notification can get the intent delivered in time.
func TestIdleRelayWokenByNotify(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	cfg := testConfig("r1")
	cfg.PollInterval = time.Hour
	r := b.startRelay(t, cfg, testSecret)
	ctx := t.Context()
	waitFor(t, 10*time.Second, "the relay to listen", func() bool { return r.Health().Listening })

	var latencies []time.Duration
	for i := range 20 {
		// Wait for the relay to announce it is idle before inserting.
		waitFor(t, 10*time.Second, "the relay to wait for a notification", func() bool {
			var waiting bool
			err := b.pool.QueryRow(ctx, `SELECT waiting FROM outbox.wakeup`).Scan(&waiting)
			return err == nil && waiting
		})
		conv := fmt.Sprintf("idle-%d", i)
		committed := time.Now()
		if _, err := outbox.Enqueue(ctx, b.pool, orderIntent(conv, i)); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, "the intent's messages to reach the fake", func() bool {
			return len(b.fake.Messages(conv)) == 2
		})
		latencies = append(latencies, b.fake.Messages(conv)[1].StoredAt.Sub(committed))
	}
	t.Logf("commit -> messages stored: %v", latencies)
}

// Producers notify only while a relay waits: under load, inserts send no
// NOTIFY at all.
func TestBusyRelayGetsNoNotifications(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	ctx := t.Context()
	if _, err := b.pool.Exec(ctx, `UPDATE outbox.wakeup SET waiting = false`); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, b.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `LISTEN outbox_intents`); err != nil {
		t.Fatal(err)
	}
	b.insertSQL(t, []outbox.Intent{orderIntent("a", 1), orderIntent("b", 2)})
	b.insertSQL(t, []outbox.Intent{orderIntent("c", 3)})
	// A sentinel notification, sent after the inserts, must be the first
	// one received.
	if _, err := b.pool.Exec(ctx, `SELECT pg_notify('outbox_intents', 'sentinel')`); err != nil {
		t.Fatal(err)
	}
	waitCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	n, err := conn.WaitForNotification(waitCtx)
	if err != nil {
		t.Fatal(err)
	}
	if n.Payload != "sentinel" {
		t.Fatalf("got a notification from an insert while no relay was waiting")
	}

	// With the flag set, exactly one insert notifies and clears it.
	if _, err := b.pool.Exec(ctx, `UPDATE outbox.wakeup SET waiting = true`); err != nil {
		t.Fatal(err)
	}
	b.insertSQL(t, []outbox.Intent{orderIntent("d", 4)})
	b.insertSQL(t, []outbox.Intent{orderIntent("e", 5)})
	if _, err := b.pool.Exec(ctx, `SELECT pg_notify('outbox_intents', 'sentinel')`); err != nil {
		t.Fatal(err)
	}
	var payloads []string
	for len(payloads) == 0 || payloads[len(payloads)-1] != "sentinel" {
		n, err := conn.WaitForNotification(waitCtx)
		if err != nil {
			t.Fatal(err)
		}
		payloads = append(payloads, n.Payload)
	}
	if len(payloads) != 2 {
		t.Errorf("notifications %q, want one from the first insert then the sentinel", payloads)
	}
}

// A wrong secret pauses delivery and makes the relay not ready; no intent
// is failed for it. Once TalkJS accepts the key, delivery resumes.
func TestWrongSecretPausesWithoutDeadLetters(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	const wrong = "sk_test_WRONG-key-value-0123456789"
	var intents []outbox.Intent
	for i := range 30 {
		intents = append(intents, orderIntent(fmt.Sprintf("conv-%d", i), i))
	}
	b.insertSQL(t, intents)
	r := b.startRelay(t, testConfig("r1"), wrong)

	waitFor(t, 10*time.Second, "the relay to pause on auth", func() bool {
		h := r.Health()
		return h.Paused == "auth" && !h.Ready
	})
	// Once paused, only probes call: one intent per probe interval.
	waitFor(t, 10*time.Second, "in-flight deliveries to stop", func() bool { return r.Health().InFlight == 0 })
	before := b.fake.Stats()
	waitFor(t, 15*time.Second, "3 more refused probes", func() bool {
		return b.fake.Stats().Statuses[401] >= before.Statuses[401]+3
	})
	if calls := b.fake.Stats().Requests - before.Requests; calls > 3*2+2 {
		t.Errorf("%d calls made during 3 probes, want at most a probe intent's 2 user calls each", calls)
	}
	c := b.counts(t)
	if c["dead"] != 0 || c["done"] != 0 {
		t.Fatalf("states while credentials are refused = %v, want all pending", c)
	}
	var maxAttempts int
	if err := b.pool.QueryRow(t.Context(), `SELECT coalesce(max(attempts), 0) FROM outbox.intents WHERE state = 'pending'`).Scan(&maxAttempts); err != nil {
		t.Fatal(err)
	}
	if maxAttempts != 0 {
		t.Errorf("refused credentials used up attempts (max %d), want none", maxAttempts)
	}

	// The key is fixed on the TalkJS side (e.g. a rotation is undone).
	b.fake.SetSecretKey(wrong)
	c = b.waitSettled(t, 60*time.Second)
	if c["done"] != 30 {
		t.Fatalf("states after the key was fixed = %v, want 30 done", c)
	}
	if h := r.Health(); !h.Ready || h.Paused != "" {
		t.Errorf("health after recovery = %+v, want ready", h)
	}
}

// The secret key never appears in logs, errors or stored errors, whatever
// fails: refused credentials (legacy mode sends the key itself), server
// errors, rejected users.
func TestSecretNeverLeaks(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{FailBefore: 0.3, RejectUserIDs: []string{"buyer-conv-0"}})
	var intents []outbox.Intent
	for i := range 10 {
		intents = append(intents, orderIntent(fmt.Sprintf("conv-%d", i), i))
	}
	b.insertSQL(t, intents)

	const wrong = "sk_test_ANOTHER-secret-that-must-not-leak"
	for _, legacy := range []bool{false, true} {
		c, err := newClient(b.url, wrong, legacy)
		if err != nil {
			t.Fatal(err)
		}
		cfg := testConfig(fmt.Sprintf("wrong-%v", legacy))
		cfg.Logger = slog.New(slog.NewTextHandler(b.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		r, err := relay.New(b.pool, c, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "auth pause", func() bool { return r.Health().Paused == "auth" })
		r.Stop()
	}
	b.startRelay(t, testConfig("right"), testSecret)
	b.waitSettled(t, 60*time.Second)

	var stored strings.Builder
	rows, err := b.pool.Query(t.Context(),
		`SELECT coalesce(last_error, '') FROM outbox.intents UNION ALL SELECT coalesce(error, '') FROM outbox.attempts`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		stored.WriteString(s)
		stored.WriteByte('\n')
	}
	logs := b.logs.String()
	if !strings.Contains(logs, "credentials") || !strings.Contains(stored.String(), "401") {
		t.Fatalf("the test did not exercise refused credentials")
	}
	for _, secret := range []string{testSecret, wrong} {
		if strings.Contains(logs, secret) {
			t.Errorf("a secret key appears in the logs")
		}
		if strings.Contains(stored.String(), secret) {
			t.Errorf("a secret key appears in stored errors")
		}
	}
}

// An unchanged user synchronised recently is not PUT again (the skip is
// recorded); and if TalkJS turns out not to have that user any more, the
// intent is retried with every user PUT instead of going dead.
func TestUnchangedUsersSkippedAndResentWhenLost(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	ctx := t.Context()
	b.startRelay(t, testConfig("r1"), testSecret)
	b.insertSQL(t, []outbox.Intent{orderIntent("c1", 1)})
	b.waitSettled(t, 10*time.Second)
	b.insertSQL(t, []outbox.Intent{orderIntent("c1", 2)})
	b.waitSettled(t, 10*time.Second)
	if st := b.fake.Stats(); st.Routes[faketalkjs.RouteUsersPut]+st.Routes[faketalkjs.RouteUserPut] != 1 {
		t.Errorf("user calls = %v, want 1 batch call (the second intent's unchanged users skipped)", st.Routes)
	}
	var skipped int
	if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM outbox.attempts WHERE outcome = 'skipped'`).Scan(&skipped); err != nil {
		t.Fatal(err)
	}
	if skipped != 2 {
		t.Errorf("recorded %d skipped user PUTs, want 2", skipped)
	}

	// TalkJS loses everything; the cache still says the users are synced.
	b.fake.Clear()
	b.insertSQL(t, []outbox.Intent{orderIntent("c1", 3)})
	c := b.waitSettled(t, 20*time.Second)
	if c["dead"] != 0 || c["done"] != 3 {
		t.Fatalf("states = %v, want 3 done", c)
	}
	if n := len(b.fake.Messages("c1")); n != 2 {
		t.Errorf("after the loss the conversation has %d messages, want the third intent's 2", n)
	}
}

// Intents delivered at the same time that share users PUT each user about
// once: a PUT under way is shared, not repeated. All 100 are claimed at
// once, so every delivery starts while the first PUT of its users is in
// flight (the fake answers after 300 ms); a delivery that starts later
// than that makes its own PUT, which the bound allows for.
func TestSharedUsersPutOnce(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{Latency: 300 * time.Millisecond})
	var intents []outbox.Intent
	for i := range 100 {
		in := orderIntent(fmt.Sprintf("conv-%d", i), i)
		in.Users[0].ID = fmt.Sprintf("user-%d", i%10)
		in.Users[0].Email = []string{in.Users[0].ID + "@example.com"}
		in.Users[0].Name = "User " + in.Users[0].ID
		in.Messages[1].Sender = in.Users[0].ID
		intents = append(intents, in)
	}
	b.insertSQL(t, intents)
	cfg := testConfig("r1")
	cfg.Concurrency, cfg.BatchSize = 100, 100
	b.startRelay(t, cfg, testSecret)
	if c := b.waitSettled(t, 60*time.Second); c["done"] != 100 {
		t.Fatalf("states = %v, want 100 done", c)
	}
	st := b.fake.Stats()
	got := st.Routes[faketalkjs.RouteUserPut] + st.Routes[faketalkjs.RouteUsersPut]
	t.Logf("user calls: %v for 11 users in 100 intents", st.Routes)
	if got < 1 || got > 20 {
		t.Errorf("user calls = %d, want 1 (10 buyers and the seller in one batch call) and at most 20: not 200", got)
	}
	var rows, calls int
	if err := b.pool.QueryRow(t.Context(), `SELECT count(*), count(DISTINCT coalesce(call_id::text, id::text))
		FROM outbox.attempts WHERE step = 'user' AND outcome = 'ok'`).Scan(&rows, &calls); err != nil {
		t.Fatal(err)
	}
	if calls != int(got) {
		t.Errorf("attempts record %d user calls (%d rows), the fake saw %d", calls, rows, got)
	}
}
