package outbox_test

import (
	"context"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/outbox"
)

// Within a conversation, id order is commit order: a second transaction's
// insert waits for the first transaction to end, so it gets the later id
// even though it started its insert while the first was still open, and
// before the first inserted its second intent (an id drawn before the
// order lock would be lower than that one's). Inserts for another
// conversation do not wait.
func TestIDOrderIsCommitOrderPerConversation(t *testing.T) {
	t.Parallel()
	pool, dbURL := pgtest.NewPool(t)
	ctx := t.Context()
	connA, connB, connC := connect(t, dbURL), connect(t, dbURL), connect(t, dbURL)

	txA, err := connA.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer txA.Rollback(ctx) //nolint:errcheck // after Commit a no-op; a failed test ends the transaction either way
	idA, err := outbox.Enqueue(ctx, txA, simpleIntent("order_C", "from A"))
	if err != nil {
		t.Fatal(err)
	}

	pidB := connB.PgConn().PID()
	txB, err := connB.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer txB.Rollback(ctx) //nolint:errcheck // after Commit a no-op; a failed test ends the transaction either way
	type result struct {
		id  int64
		err error
	}
	doneB := make(chan result, 1)
	go func() {
		id, err := outbox.Enqueue(ctx, txB, simpleIntent("order_C", "from B"))
		doneB <- result{id, err}
	}()

	// B is blocked on the conversation's order lock, held by A.
	relaytest.WaitFor(t, 30*time.Second, "B waits on the advisory lock", func() bool {
		var waiting bool
		err := pool.QueryRow(ctx, `
SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock' AND wait_event = 'advisory')`,
			pidB).Scan(&waiting)
		if err != nil {
			t.Fatal(err)
		}
		return waiting
	})

	// Another conversation goes ahead meanwhile.
	ctxC, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	txC, err := connC.Begin(ctxC)
	if err != nil {
		t.Fatal(err)
	}
	defer txC.Rollback(ctx) //nolint:errcheck // after Commit a no-op; a failed test ends the transaction either way
	if _, err := outbox.Enqueue(ctxC, txC, simpleIntent("order_D", "from C")); err != nil {
		t.Fatalf("insert for another conversation: %v", err)
	}
	if err := txC.Commit(ctxC); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-doneB:
		t.Fatalf("B finished while A still held the conversation: %+v", r)
	default:
	}

	// A's second intent of the conversation, inserted while B waits.
	idA2, err := outbox.Enqueue(ctx, txA, simpleIntent("order_C", "from A, again"))
	if err != nil {
		t.Fatal(err)
	}
	if err := txA.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	var rB result
	select {
	case rB = <-doneB:
	case <-time.After(30 * time.Second):
		t.Fatal("B still blocked after A committed")
	}
	if rB.err != nil {
		t.Fatal(rB.err)
	}
	if err := txB.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if idA >= rB.id || idA2 >= rB.id {
		t.Errorf("ids of A = %d and %d, id of B = %d: want A's ids first, as A committed first", idA, idA2, rB.id)
	}
}
