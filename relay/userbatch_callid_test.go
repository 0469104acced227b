package relay_test

import (
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
)

// A single user PUT that serves several intents (the only user of the
// batch to PUT, shared by two intents) is one call: its rows share a call
// id, so the audit views count it once, as the metrics do.
func TestSharedSingleUserPutIsOneCall(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	first := b.startRelay(t, testConfig("callid-0"), testSecret)
	b.waitDone(t, b.insertSQL(t, []outbox.Intent{orderIntent("x", 0)})[0])
	first.Stop()

	// Both carry x's buyer as synced (skipped) and the seller with new
	// content: one PUT of the seller serves both.
	p, q := sellerNamed("x", 1, "Seller 2"), sellerNamed("x", 2, "Seller 2")
	p.Conversation.ID, q.Conversation.ID = "p", "q"
	ids := b.insertSQL(t, []outbox.Intent{p, q})
	b.startRelay(t, testConfig("callid-1"), testSecret)
	if c := b.waitSettled(t, 30*time.Second); c["done"] != 3 {
		t.Fatalf("states = %v, want 3 done", c)
	}
	if r := b.routes(); r[faketalkjs.RouteUsersPut] != 1 || r[faketalkjs.RouteUserPut] != 1 {
		t.Fatalf("%d batch and %d single user PUTs, want 1 (x's users) and 1 (the seller, once)", r[faketalkjs.RouteUsersPut], r[faketalkjs.RouteUserPut])
	}
	if n := b.count(t, `SELECT count(*) FROM outbox.attempts WHERE target = 'seller' AND outcome = 'ok' AND call_id IS NOT NULL
		AND intent_id = ANY ($1)`, ids); n != 2 {
		t.Errorf("%d of the shared PUT's 2 rows carry a call id, want both", n)
	}
	if n := b.count(t, `SELECT count(DISTINCT call_id) FROM outbox.attempts WHERE target = 'seller' AND intent_id = ANY ($1)`, ids); n != 1 {
		t.Errorf("the shared PUT's rows have %d call ids, want 1", n)
	}
	if n := b.count(t, `SELECT coalesce(sum(calls), 0) FROM outbox.calls_per_minute WHERE step = 'user' AND outcome = 'ok'`); n != 2 {
		t.Errorf("calls_per_minute counts %d user calls, want 2", n)
	}
}
