package relay_test

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
	"github.com/outbox-relay/outbox-relay/relay"
)

// A head that fails again and again with 10,000 intents of its
// conversation queued behind it: each failure writes the head's row and no
// other, and the claim does not walk the queue. Counted in rows, not timed.
func TestFailingHeadTouchesNoSuccessor(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	ctx := t.Context()
	const queue = 10_000
	var head int64
	if err := b.pool.QueryRow(ctx, `
WITH ins AS (
    INSERT INTO outbox.intents (payload)
    SELECT jsonb_build_object('conversation', jsonb_build_object('id', 'busy'),
                              'messages', jsonb_build_array(jsonb_build_object('type', 'SystemMessage', 'text', 'n' || g)))
      FROM generate_series(0, $1::int) g
    RETURNING id)
SELECT min(id) FROM ins`, queue).Scan(&head); err != nil {
		t.Fatal(err)
	}
	var others []outbox.Intent
	for i := range 5 {
		others = append(others, orderIntent(fmt.Sprintf("other-%d", i), i))
	}
	b.insertSQL(t, others)
	if _, err := b.pool.Exec(ctx, `ANALYZE outbox.intents`); err != nil {
		t.Fatal(err)
	}

	r, err := relay.New(b.pool, b.client(t, testSecret), testConfig("parking"))
	if err != nil {
		t.Fatal(err)
	}
	// failHead claims, expects the head among what it gets, records the head
	// as a failure due again at once and everything else as done.
	failHead := func() {
		t.Helper()
		jobs, err := r.Claim(ctx, 10)
		if err != nil {
			t.Fatal(err)
		}
		var failed, done []*relay.ClaimedIntent
		for _, j := range jobs {
			if j.ID() == head {
				failed = append(failed, j)
			} else {
				done = append(done, j)
			}
			if j.ID() > head && j.ID() <= head+queue {
				t.Fatalf("claimed intent %d behind the pending head %d", j.ID(), head)
			}
		}
		if len(failed) != 1 {
			t.Fatalf("claim returned %d jobs without the head", len(jobs))
		}
		if err := r.Complete(ctx, failed, "retry", 0); err != nil {
			t.Fatal(err)
		}
		if err := r.Complete(ctx, done, "done", 0); err != nil {
			t.Fatal(err)
		}
	}
	// The first claims meet the queue (each parks a bounded share of it).
	for range 12 {
		failHead()
	}

	// One more round, measured: the claim takes the head and writes no
	// other row; the failure writes the head's row and no other.
	v0 := rowVersions(t, b.pool)
	jobs, err := r.Claim(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(jobs) != 1 || jobs[0].ID() != head {
		t.Fatalf("claim returned %d jobs, want the head alone", len(jobs))
	}
	v1 := rowVersions(t, b.pool)
	if err := r.Complete(ctx, jobs, "retry", 0); err != nil {
		t.Fatal(err)
	}
	v2 := rowVersions(t, b.pool)
	if n := changedRows(v0, v1); n != 1 {
		t.Errorf("the claim rewrote %d rows, want 1 (the head)", n)
	}
	if n := changedRows(v1, v2); n != 1 {
		t.Errorf("the head's failure rewrote %d rows, want 1 (the head)", n)
	}

	// What the claim reads: rows of outbox.intents it visits, from EXPLAIN
	// ANALYZE in a transaction rolled back.
	sql, args := r.ClaimStatement(10)
	read, ms := explainIntentRows(t, b.pool, sql, args)
	t.Logf("claim with %d intents queued behind a due head: visits %d rows of outbox.intents, executes in %.3f ms",
		queue, read, ms)
	if read > 50 {
		t.Errorf("the claim visited %d rows of outbox.intents, want a handful: it walks the queue", read)
	}
	// The sweep's backstop for stranded parked heads probes each
	// conversation's head, never its queue.
	sql, args = relay.UnparkHeadsStatement()
	read, ms = explainIntentRows(t, b.pool, sql, args)
	t.Logf("unparking stranded heads with %d intents queued behind a head: visits %d rows of outbox.intents, executes in %.3f ms",
		queue, read, ms)
	if read > 50 {
		t.Errorf("unparking stranded heads visited %d rows of outbox.intents, want a handful: it walks the queue", read)
	}
	if c := b.counts(t); c["pending"] != queue+1 || c["done"] != len(others) {
		t.Errorf("states = %v, want %d pending and %d done", c, queue+1, len(others))
	}
}

// rowVersions maps each intent id to its row version (xmin).
func rowVersions(t *testing.T, pool *pgxpool.Pool) map[int64]string {
	t.Helper()
	rows, err := pool.Query(t.Context(), `SELECT id, xmin::text FROM outbox.intents`)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int64]string{}
	var id int64
	var xmin string
	if _, err := pgx.ForEachRow(rows, []any{&id, &xmin}, func() error { out[id] = xmin; return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

// changedRows counts the rows whose version differs between two snapshots.
func changedRows(before, after map[int64]string) int {
	n := 0
	for id, v := range after {
		if before[id] != v {
			n++
		}
	}
	return n
}

// explainIntentRows runs sql under EXPLAIN ANALYZE in a transaction it
// rolls back, and returns how many rows of outbox.intents its scans
// visited (returned or removed by a filter, over all loops) and its
// execution time in milliseconds.
func explainIntentRows(t *testing.T, pool *pgxpool.Pool, sql string, args []any) (int, float64) {
	t.Helper()
	ctx := t.Context()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	var out []byte
	if err := tx.QueryRow(ctx, "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) "+sql, args...).Scan(&out); err != nil {
		t.Fatal(err)
	}
	var plans []struct {
		Plan planNode
		Ms   float64 `json:"Execution Time"`
	}
	if err := json.Unmarshal(out, &plans); err != nil {
		t.Fatal(err)
	}
	var walk func(n planNode) int
	walk = func(n planNode) int {
		total := 0
		if n.Relation == "intents" {
			total += (n.ActualRows + n.RemovedByFilter + n.RemovedByRecheck) * max(n.Loops, 1)
		}
		for _, c := range n.Plans {
			total += walk(c)
		}
		return total
	}
	return walk(plans[0].Plan), plans[0].Ms
}

type planNode struct {
	Relation         string     `json:"Relation Name"`
	ActualRows       int        `json:"Actual Rows"`
	Loops            int        `json:"Actual Loops"`
	RemovedByFilter  int        `json:"Rows Removed by Filter"`
	RemovedByRecheck int        `json:"Rows Removed by Index Recheck"`
	Plans            []planNode `json:"Plans"`
}
