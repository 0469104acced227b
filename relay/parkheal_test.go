package relay_test

import (
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
	"github.com/outbox-relay/outbox-relay/relay"
)

// A successor committed while its predecessor's completion is under way
// (its snapshot taken, its write waiting on the predecessor's row, here
// held by another session as a lease renewal would) is parked by a claim
// that still sees the predecessor delivering. The completion's own
// snapshot does not see the successor, so it unparks nothing. The sweep
// must unpark a parked intent that no active intent precedes; before, the
// successor stayed parked for ever.
func TestParkedSuccessorOfARacingCompletionIsUnparked(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	ctx := t.Context()
	insert := func(text string) int64 {
		t.Helper()
		var id int64
		if err := b.pool.QueryRow(ctx, `
INSERT INTO outbox.intents (payload)
VALUES (jsonb_build_object('conversation', jsonb_build_object('id', 'race'),
                           'messages', jsonb_build_array(jsonb_build_object('type', 'SystemMessage', 'text', $1::text))))
RETURNING id`, text).Scan(&id); err != nil {
			t.Fatal(err)
		}
		return id
	}
	r, err := relay.New(b.pool, b.client(t, testSecret), testConfig("race"))
	if err != nil {
		t.Fatal(err)
	}
	head := insert("head")
	jobs, err := r.Claim(ctx, 10)
	if err != nil || len(jobs) != 1 || jobs[0].ID() != head {
		t.Fatalf("claim = %d jobs, %v; want the head", len(jobs), err)
	}

	// Another session locks the head's row, so the completion waits on it
	// after taking its snapshot.
	holder, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = holder.Rollback(ctx) }()
	if _, err := holder.Exec(ctx, `SELECT 1 FROM outbox.intents WHERE id = $1 FOR SHARE`, head); err != nil {
		t.Fatal(err)
	}
	completed := make(chan error, 1)
	go func() { completed <- r.Complete(ctx, jobs, "done", 0) }()
	relaytest.WaitFor(t, 10*time.Second, "the completion to wait on the head's row", func() bool {
		var n int
		if err := b.pool.QueryRow(ctx, `
SELECT count(*) FROM pg_stat_activity
 WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%completed AS%'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n > 0
	})

	next := insert("next")
	if jobs, err := r.Claim(ctx, 10); err != nil || len(jobs) != 0 {
		t.Fatalf("claim behind a delivering head = %d jobs, %v; want none", len(jobs), err)
	}
	var parked bool
	if err := b.pool.QueryRow(ctx, `SELECT parked FROM outbox.intents WHERE id = $1`, next).Scan(&parked); err != nil {
		t.Fatal(err)
	}
	if !parked {
		t.Fatal("the claim did not park the successor: the race this test sets up did not happen")
	}
	if err := holder.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-completed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the completion did not finish once the head's row was free")
	}

	// A sweep does not wait on a stranded head another session holds: it
	// leaves it to the next pass.
	locker, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = locker.Rollback(ctx) }()
	if _, err := locker.Exec(ctx, `SELECT 1 FROM outbox.intents WHERE id = $1 FOR UPDATE`, next); err != nil {
		t.Fatal(err)
	}
	swept := make(chan struct{})
	go func() { r.ExpireLeases(ctx); close(swept) }()
	select {
	case <-swept:
	case <-time.After(10 * time.Second):
		t.Error("the sweep waits on a head whose row another session holds")
		_ = locker.Rollback(ctx)
		<-swept
	}
	if err := locker.Rollback(ctx); err != nil {
		t.Fatal(err)
	}

	r.ExpireLeases(ctx) // one sweep
	jobs, err = r.Claim(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(jobs) != 1 || jobs[0].ID() != next {
		t.Fatalf("after the head is done and a sweep, the claim got %d jobs; want the successor %d (still parked, nothing before it active)", len(jobs), next)
	}
}
