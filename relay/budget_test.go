package relay_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
	"github.com/outbox-relay/outbox-relay/relay"
)

// intentState reads an intent's state, whether its age budget runs, and
// its last error.
func (b *bundle) intentState(t *testing.T, id int64) (state string, failing bool, lastError string) {
	t.Helper()
	if err := b.pool.QueryRow(t.Context(),
		`SELECT state, failing_since IS NOT NULL, coalesce(last_error, '') FROM outbox.intents WHERE id = $1`, id).
		Scan(&state, &failing, &lastError); err != nil {
		t.Fatal(err)
	}
	return state, failing, lastError
}

// claimOne claims exactly the one due intent.
func claimOne(t *testing.T, r *relay.Relay) []*relay.ClaimedIntent {
	t.Helper()
	jobs, err := r.Claim(t.Context(), 1)
	if err != nil || len(jobs) != 1 {
		t.Fatalf("claim: %d jobs, %v; want 1", len(jobs), err)
	}
	return jobs
}

// OUTBOX_MAX_AGE counts from an intent's first failure, not from its
// creation: an intent that waited longer than the budget (behind a failing
// predecessor, or while delivery was paused) before its first attempt is
// not made dead by that first failure, whether the failure is an answer
// or a lost lease. Once the budget has run from its first failure, the
// next failure makes it dead, and retry starts the clock again.
func TestMaxAgeCountsFromFirstFailure(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	ctx := t.Context()
	cfg := withLogs(testConfig("budget"), b)
	cfg.MaxAge = time.Hour
	r, err := relay.New(b.pool, b.client(t, testSecret), cfg)
	if err != nil {
		t.Fatal(err)
	}

	// A failed answer.
	id := b.insertSQL(t, []outbox.Intent{orderIntent("waited", 1)})[0]
	b.exec(t, `UPDATE outbox.intents SET created_at = now() - interval '3 hours' WHERE id = $1`, id)
	if err := r.Complete(ctx, claimOne(t, r), "retry", 0); err != nil {
		t.Fatal(err)
	}
	if state, failing, msg := b.intentState(t, id); state != "pending" || !failing {
		t.Fatalf("after its first failure, 3 h after creation: %s (%s), age budget running %v; want pending, running", state, msg, failing)
	}
	b.exec(t, `UPDATE outbox.intents SET failing_since = now() - interval '2 hours' WHERE id = $1`, id)
	if err := r.Complete(ctx, claimOne(t, r), "retry", 0); err != nil {
		t.Fatal(err)
	}
	if state, _, msg := b.intentState(t, id); state != "dead" || !strings.Contains(msg, "retry budget spent") {
		t.Fatalf("failing for 2 h with a 1 h budget: %s (%s); want dead, budget spent", state, msg)
	}
	if _, err := relay.Retry(ctx, b.pool, relay.Selection{IDs: []int64{id}}, false); err != nil {
		t.Fatal(err)
	}
	if state, failing, _ := b.intentState(t, id); state != "pending" || failing {
		t.Fatalf("after retry: %s, age budget running %v; want pending, not running", state, failing)
	}
	b.exec(t, `UPDATE outbox.intents SET state = 'dead', last_error = 'parked by the test' WHERE id = $1`, id)

	// A lost lease.
	id = b.insertSQL(t, []outbox.Intent{orderIntent("lost", 2)})[0]
	b.exec(t, `UPDATE outbox.intents SET created_at = now() - interval '3 hours' WHERE id = $1`, id)
	claimOne(t, r)
	b.exec(t, `UPDATE outbox.intents SET lease_expires_at = now() - interval '1 hour' WHERE id = $1`, id)
	r.ExpireLeases(ctx)
	if state, failing, msg := b.intentState(t, id); state != "pending" || !failing {
		t.Fatalf("after its first lost lease, 3 h after creation: %s (%s), age budget running %v; want pending, running", state, msg, failing)
	}
}

// checkGuarded fails unless err is the guard's refusal mentioning what.
func checkGuarded(t *testing.T, err error, what string) {
	t.Helper()
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "55000" || !strings.Contains(pgErr.Message, what) {
		t.Fatalf("err = %v, want SQLSTATE 55000 saying %q", err, what)
	}
	if !strings.Contains(pgErr.Hint, "insert a new intent") {
		t.Errorf("hint %q does not say to insert a new intent", pgErr.Hint)
	}
}

// An intent's payload cannot change while it is delivered, and once it
// was ever claimed its messages may only be appended to: a changed,
// removed or reordered message would reuse an idempotency key TalkJS may
// already hold. Users and the conversation may be corrected, and an
// appended message is delivered after a retry.
func TestPayloadUpdateGuard(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	ctx := t.Context()
	r, err := relay.New(b.pool, b.client(t, testSecret), withLogs(testConfig("guard"), b))
	if err != nil {
		t.Fatal(err)
	}
	intent := orderIntent("guarded", 1)
	id := b.insertSQL(t, []outbox.Intent{intent})[0]
	setPayload := func(in outbox.Intent) error {
		payload, err := json.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		_, err = b.pool.Exec(ctx, `UPDATE outbox.intents SET payload = $2 WHERE id = $1`, id, payload)
		return err
	}
	withText := func(in outbox.Intent, i int, text string) outbox.Intent {
		in.Messages = append([]outbox.Message(nil), in.Messages...)
		in.Messages[i].Text = text
		return in
	}

	// Never claimed: anything valid goes.
	intent = withText(intent, 1, "hello, edited before any attempt")
	if err := setPayload(intent); err != nil {
		t.Fatalf("editing a message of an intent never claimed: %v", err)
	}

	jobs := claimOne(t, r)
	renamed := intent
	renamed.Users = append([]outbox.User(nil), intent.Users...)
	renamed.Users[0].Name = "Renamed"
	checkGuarded(t, setPayload(renamed), "being delivered")
	if err := r.Complete(ctx, jobs, "dead", 0); err != nil {
		t.Fatal(err)
	}

	checkGuarded(t, setPayload(withText(intent, 0, "changed")), "messages cannot be changed")
	shorter := intent
	shorter.Messages = intent.Messages[:1]
	checkGuarded(t, setPayload(shorter), "messages cannot be changed")
	swapped := intent
	swapped.Messages = []outbox.Message{intent.Messages[1], intent.Messages[0]}
	checkGuarded(t, setPayload(swapped), "messages cannot be changed")

	// Correcting a user and appending a message are allowed.
	intent = renamed
	intent.Messages = append(append([]outbox.Message(nil), intent.Messages...), outbox.Message{Type: outbox.SystemMessage, Text: "appended after the first attempt"})
	if err := setPayload(intent); err != nil {
		t.Fatalf("renaming a user and appending a message to a dead intent: %v", err)
	}
	if _, err := relay.Retry(ctx, b.pool, relay.Selection{IDs: []int64{id}}, false); err != nil {
		t.Fatal(err)
	}
	b.startRelay(t, testConfig("deliverer"), testSecret)
	b.waitSettled(t, 30*time.Second)
	b.checkDelivered(t, []outbox.Intent{intent})
}
