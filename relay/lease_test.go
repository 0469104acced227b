package relay_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
	"github.com/outbox-relay/outbox-relay/relay"
)

// heldProvider holds every conversation PUT until released, so a test can
// keep a delivery in flight while its lease is taken away.
type heldProvider struct {
	provider.Provider
	entered chan string
	release chan struct{}
}

func (h *heldProvider) PutConversation(ctx context.Context, c provider.Conversation) error {
	h.entered <- c.ID
	select {
	case <-h.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	return h.Provider.PutConversation(ctx, c)
}

// A relay whose lease expired and whose intent another relay took over and
// delivered cannot overwrite the new owner's result (fencing by lease token).
func TestExpiredLeaseCannotOverwriteNewOwner(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	ctx := t.Context()
	held := &heldProvider{Provider: b.client(t, testSecret), entered: make(chan string, 1), release: make(chan struct{})}
	cfgA := testConfig("relay-a")
	// One slot, so relay-a cannot claim the intent again once it is taken
	// back; a long lease, so its heartbeat does not renew before the sweep.
	cfgA.Concurrency = 1
	cfgA.Lease = time.Minute
	stale, err := relay.New(b.pool, held, withLogs(cfgA, b))
	if err != nil {
		t.Fatal(err)
	}
	if err := stale.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stale.Stop)

	ids := b.insertSQL(t, []outbox.Intent{orderIntent("fenced", 1)})
	select {
	case <-held.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("relay-a never reached the conversation step")
	}
	// relay-a is mid-delivery. Its lease runs out (as if it had been
	// paused past it): the database clock says so.
	if _, err := b.pool.Exec(ctx, `UPDATE outbox.intents SET lease_expires_at = now() - interval '1 second' WHERE id = $1`, ids[0]); err != nil {
		t.Fatal(err)
	}
	b.startRelay(t, testConfig("relay-b"), testSecret)
	b.waitSettled(t, 15*time.Second)

	var state, owner string
	var doneAt *time.Time
	if err := b.pool.QueryRow(ctx, `SELECT state, coalesce(lease_owner, ''), done_at FROM outbox.intents WHERE id = $1`, ids[0]).Scan(&state, &owner, &doneAt); err != nil {
		t.Fatal(err)
	}
	if state != "done" || doneAt == nil {
		t.Fatalf("after takeover: state %s, want done by relay-b", state)
	}

	// relay-a wakes up and finishes its stale attempt.
	close(held.release)
	waitFor(t, 15*time.Second, "relay-a to record its stale attempt", func() bool {
		var n int
		err := b.pool.QueryRow(ctx, `SELECT count(*) FROM outbox.attempts WHERE relay = 'relay-a' AND step = 'messages'`).Scan(&n)
		return err == nil && n > 0
	})
	stale.Stop()
	if !strings.Contains(b.logs.String(), "result discarded") {
		t.Errorf("relay-a did not report its result as discarded")
	}
	var after string
	var doneAfter *time.Time
	if err := b.pool.QueryRow(ctx, `SELECT state, done_at FROM outbox.intents WHERE id = $1`, ids[0]).Scan(&after, &doneAfter); err != nil {
		t.Fatal(err)
	}
	if after != "done" || doneAfter == nil || !doneAfter.Equal(*doneAt) {
		t.Errorf("relay-a overwrote the new owner's result: state %s done_at %v, want done at %v", after, doneAfter, doneAt)
	}
	if n := len(b.fake.Messages("fenced")); n != 2 {
		t.Errorf("fake holds %d messages, want 2", n)
	}
}

func withLogs(cfg relay.Config, b *bundle) relay.Config {
	cfg.Logger = slogTo(b)
	return cfg
}
