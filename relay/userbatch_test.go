package relay_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
	"github.com/outbox-relay/outbox-relay/relay"
)

// Batch user sync: the users of a claim batch go to TalkJS in batch calls
// (PUT /v1/{appId}/users). Every test inserts its intents before the relay
// starts, so that its first claim takes them all in one batch.

// paddedOrders returns n order intents c000, c001, ...: a buyer each and
// the shared seller.
func paddedOrders(n int) []outbox.Intent {
	out := make([]outbox.Intent, n)
	for i := range out {
		out[i] = orderIntent(fmt.Sprintf("c%03d", i), i)
	}
	return out
}

// routes returns the fake's request counts by route.
func (b *bundle) routes() map[string]int64 { return b.fake.Stats().Routes }

// wantRoutes checks the fake's request counts for the calls of a
// delivery.
func (b *bundle) wantRoutes(t *testing.T, batch, user, conv, msgs int64) {
	t.Helper()
	r := b.routes()
	got := []int64{r[faketalkjs.RouteUsersPut], r[faketalkjs.RouteUserPut], r[faketalkjs.RouteConversationPut], r[faketalkjs.RouteMessagePost]}
	if want := []int64{batch, user, conv, msgs}; !slices.Equal(got, want) {
		t.Errorf("requests (batch users, user, conversation, messages) = %v, want %v", got, want)
	}
}

// A batch refused with 400 naming one entry: only the intent carrying it
// goes dead (its error names the user and what TalkJS said); the batch is
// sent again without it and every other intent is delivered, each call
// counted exactly.
func TestBatchSyncInvalidEntryDeadLettersOnlyItsIntent(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{RejectUserIDs: []string{"buyer-c003"}})
	intents := paddedOrders(10)
	ids := b.insertSQL(t, intents)
	b.startRelay(t, testConfig("r1"), testSecret)

	c := b.waitSettled(t, 30*time.Second)
	if c["done"] != 9 || c["dead"] != 1 {
		t.Fatalf("states = %v, want 9 done and 1 dead", c)
	}
	state, _, lastErr := b.intentState(t, ids[3])
	if state != "dead" || !strings.Contains(lastErr, `"buyer-c003"`) || !strings.Contains(lastErr, "injected fault: user rejected") {
		t.Errorf("intent 3: %s, last_error %q: want dead, naming the user and TalkJS's message", state, lastErr)
	}
	b.checkDelivered(t, slices.Delete(slices.Clone(intents), 3, 4))
	// The refused batch, then the rest in one call; 9 conversations and
	// 9 message posts.
	b.wantRoutes(t, 2, 0, 9, 9)
	if n := b.fake.Stats().Requests; n != 20 {
		t.Errorf("the fake saw %d requests, want 20", n)
	}
	// The refused call served all ten intents and the eleven users; its
	// rows share one call id. The dead letter's failed call is its own user's.
	if n := b.count(t, `SELECT count(DISTINCT call_id) FROM outbox.attempts WHERE status = 400`); n != 1 {
		t.Errorf("%d refused calls recorded, want 1", n)
	}
	if n := b.count(t, `SELECT count(DISTINCT intent_id) FROM outbox.attempts WHERE status = 400`); n != 10 {
		t.Errorf("the refused call is recorded for %d intents, want 10", n)
	}
	var target string
	if err := b.pool.QueryRow(t.Context(), `SELECT failed_target FROM outbox.dead_letters WHERE id = $1`, ids[3]).Scan(&target); err != nil || target != "buyer-c003" {
		t.Errorf("dead letter's failed target = %q (%v), want buyer-c003", target, err)
	}
	// The second call synced every user but the bad one, for every
	// intent (the dead one's seller too).
	if n := b.count(t, `SELECT count(DISTINCT call_id) FROM outbox.attempts
		WHERE step = 'user' AND outcome = 'ok' AND call_id IS NOT NULL`); n != 1 {
		t.Errorf("%d batch calls succeeded, want 1", n)
	}
	if n := b.count(t, `SELECT count(*) FROM outbox.attempts WHERE step = 'user' AND outcome = 'ok'`); n != 19 {
		t.Errorf("%d user rows ok, want 19 (buyer and seller of 9 intents, and the dead one's seller)", n)
	}
}

// A user carried by several intents of one batch is sent once, with the
// content of the highest intent id; every PUT of it got a 200 for that
// content, so its record is written and the next intent with that content
// skips it.
func TestBatchSyncSharedUserCarriesLatestContent(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	ids := b.insertSQL(t, []outbox.Intent{sellerNamed("a", 1, "Seller 1"), sellerNamed("b", 2, "Seller 2"), sellerNamed("c", 3, "Seller 3")})
	b.startRelay(t, testConfig("r1"), testSecret)
	if c := b.waitSettled(t, 30*time.Second); c["done"] != 3 {
		t.Fatalf("states = %v, want 3 done", c)
	}
	b.wantSeller(t, b.fake, "Seller 3")
	b.wantRoutes(t, 1, 0, 3, 3)
	if n := b.count(t, `SELECT count(*) FROM outbox.attempts WHERE target = 'seller' AND outcome = 'ok' AND call_id IS NOT NULL
		AND intent_id = ANY ($1)`, ids); n != 3 {
		t.Errorf("seller rows = %d, want one per intent", n)
	}

	b.waitDone(t, b.insertSQL(t, []outbox.Intent{sellerNamed("d", 4, "Seller 3")})[0])
	if n := b.count(t, `SELECT count(*) FROM outbox.attempts WHERE target = 'seller' AND outcome = 'skipped'`); n != 1 {
		t.Errorf("seller skips = %d, want 1: the record holds the latest content", n)
	}
	b.wantSeller(t, b.fake, "Seller 3")
}

// More than 100 distinct users go in calls of at most 100.
func TestBatchSyncSplitsIntoCallsOf100(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	intents := paddedOrders(120) // 121 distinct users
	b.insertSQL(t, intents)
	cfg := testConfig("r1")
	cfg.Concurrency, cfg.BatchSize = 120, 120
	b.startRelay(t, cfg, testSecret)
	if c := b.waitSettled(t, 60*time.Second); c["done"] != 120 {
		t.Fatalf("states = %v, want 120 done", c)
	}
	b.checkDelivered(t, intents)
	b.wantRoutes(t, 2, 0, 120, 120)
	rows, err := b.pool.Query(t.Context(), `SELECT count(DISTINCT target) FROM outbox.attempts
		WHERE call_id IS NOT NULL GROUP BY call_id ORDER BY 1 DESC`)
	if err != nil {
		t.Fatal(err)
	}
	var sizes []int
	for rows.Next() {
		var n int
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, n)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(sizes, []int{100, 21}) {
		t.Errorf("users per batch call = %v, want [100 21]", sizes)
	}
}

// An API without the batch route (404 or 405): users go one by one, and
// the relay does not try the route again (and says so once).
func TestBatchSyncFallsBackToSinglePuts(t *testing.T) {
	t.Parallel()
	for _, status := range []int{404, 405} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			t.Parallel()
			b := setup(t, faketalkjs.Faults{BatchUnsupported: status})
			intents := paddedOrders(5)
			b.insertSQL(t, intents)
			b.startRelay(t, testConfig("r1"), testSecret)
			if c := b.waitSettled(t, 30*time.Second); c["done"] != 5 {
				t.Fatalf("states = %v, want 5 done", c)
			}
			b.wantRoutes(t, 1, 6, 5, 5) // 5 buyers and the seller

			more := []outbox.Intent{orderIntent("d1", 1), orderIntent("d2", 2)}
			b.insertSQL(t, more)
			if c := b.waitSettled(t, 30*time.Second); c["done"] != 7 {
				t.Fatalf("states = %v, want 7 done", c)
			}
			b.checkDelivered(t, append(intents, more...))
			b.wantRoutes(t, 1, 8, 7, 7) // the seller skipped: its record
			if n := strings.Count(b.logs.String(), "no batch users endpoint"); n != 1 {
				t.Errorf("the fallback is logged %d times, want once", n)
			}
		})
	}
}

// A batch call that fails (a 500 after TalkJS applied it, or no answer)
// fails every intent it served as a failed user PUT does: a counted,
// retryable attempt, and no record of its users survives, so the next
// intent carrying their old content PUTs them again.
func TestBatchSyncRetryableFailureIsCountedAndLeavesNoRecord(t *testing.T) {
	t.Parallel()
	for name, faults := range map[string]faketalkjs.Faults{
		"500 after applying": {FailAfterUserIDs: []string{"seller"}},
		"no answer":          {Hang: true},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, faketalkjs.Faults{})
			r, err := relay.New(b.pool, b.clientWithTimeout(t, 300*time.Millisecond), withLogs(slowRetries(testConfig("r1")), b))
			if err != nil {
				t.Fatal(err)
			}
			if err := r.Start(t.Context()); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(r.Stop)
			b.waitDone(t, b.insertSQL(t, []outbox.Intent{sellerNamed("a", 1, "Old")})[0])
			if n := b.count(t, `SELECT count(*) FROM outbox.synced_users WHERE user_id = 'seller'`); n != 1 {
				t.Fatalf("seller records = %d after its first sync, want 1", n)
			}

			b.fake.SetFaults(faults)
			ids := b.insertSQL(t, []outbox.Intent{sellerNamed("b", 2, "New"), sellerNamed("c", 3, "New")})
			waitFor(t, 20*time.Second, "both intents to fail their attempt", func() bool {
				return b.count(t, `SELECT count(*) FROM outbox.intents WHERE id = ANY ($1) AND state = 'pending'
					AND attempts = 1 AND failing_since IS NOT NULL`, ids) == 2
			})
			b.fake.SetFaults(faketalkjs.Faults{})
			for _, id := range ids {
				_, _, lastErr := b.intentState(t, id)
				if !strings.Contains(lastErr, "user: retryable") {
					t.Errorf("intent %d: last_error %q, want the batch call's retryable failure", id, lastErr)
				}
			}
			if n := b.count(t, `SELECT count(DISTINCT call_id) FROM outbox.attempts WHERE intent_id = ANY ($1)
				AND outcome = 'retryable' AND call_id IS NOT NULL`, ids); n != 1 {
				t.Errorf("%d failed batch calls recorded for the two intents, want 1", n)
			}
			if n := b.count(t, `SELECT count(*) FROM outbox.synced_users WHERE user_id IN ('seller', 'buyer-b', 'buyer-c')`); n != 0 {
				t.Errorf("%d records left for the failed call's users, want none", n)
			}
			if n := b.routes()[faketalkjs.RouteConversationPut]; n != 1 {
				t.Errorf("conversation PUTs = %d, want only the first intent's", n)
			}

			b.waitDone(t, b.insertSQL(t, []outbox.Intent{sellerNamed("d", 4, "Old")})[0])
			if name == "500 after applying" {
				b.wantSeller(t, b.fake, "Old")
			}
			if n := b.count(t, `SELECT count(*) FROM outbox.attempts WHERE target = 'seller' AND outcome = 'skipped'`); n != 0 {
				t.Errorf("the seller was skipped %d times after a failed call, want never", n)
			}
		})
	}
}

// Calls of one batch end differently: the intents whose users were all in
// the calls that succeeded are delivered; those with a user in the call
// that failed are retried, and only the users of the failed call lose
// their records.
func TestBatchSyncMixedCallOutcomes(t *testing.T) {
	t.Parallel()
	// Users are sent in the order of the first intent carrying them: the
	// first call holds buyer-c000, the seller and buyer-c001..c098, the
	// second buyer-c099..c119.
	b := setup(t, faketalkjs.Faults{FailAfterUserIDs: []string{"buyer-c110"}})
	intents := paddedOrders(120)
	ids := b.insertSQL(t, intents)
	cfg := slowRetries(testConfig("r1"))
	cfg.Concurrency, cfg.BatchSize = 120, 120
	b.startRelay(t, cfg, testSecret)
	waitFor(t, 60*time.Second, "every intent delivered or retrying", func() bool {
		return b.count(t, `SELECT count(*) FROM outbox.intents WHERE state = 'done' OR (state = 'pending' AND attempts = 1)`) == 120
	})
	failed := ids[99:]
	if n := b.count(t, `SELECT count(*) FROM outbox.intents WHERE id = ANY ($1) AND state = 'pending' AND attempts = 1
		AND last_error LIKE '%user: retryable: status 500%'`, failed); n != len(failed) {
		t.Errorf("%d of the %d intents with a user in the failed call are retrying after it", n, len(failed))
	}
	if n := b.count(t, `SELECT count(*) FROM outbox.intents WHERE state = 'done' AND id = ANY ($1)`, ids[:99]); n != 99 {
		t.Errorf("%d of the 99 intents whose users were in the call that succeeded are done", n)
	}
	b.wantRoutes(t, 2, 0, 99, 99)
	if n := b.count(t, `SELECT count(*) FROM outbox.synced_users WHERE user_id >= 'buyer-c099' AND user_id <= 'buyer-c119'`); n != 0 {
		t.Errorf("%d records for the failed call's users, want none", n)
	}
	if n := b.count(t, `SELECT count(*) FROM outbox.synced_users WHERE user_id IN ('seller', 'buyer-c000', 'buyer-c098')`); n != 3 {
		t.Errorf("%d records for users of the call that succeeded, want 3", n)
	}
}

// refuseNameless answers a batch holding a given user as TalkJS might: a
// permanent error (a 400 whose body names no entry, a 422) that names no
// entry. Single PUTs go to the API.
type refuseNameless struct {
	provider.Provider
	bad    string
	status int
	calls  atomic.Int64 // batch calls
}

func (p *refuseNameless) PutUsers(ctx context.Context, users []provider.User) error {
	p.calls.Add(1)
	if slices.ContainsFunc(users, func(u provider.User) bool { return u.ID == p.bad }) {
		return &provider.Error{Kind: provider.Permanent, Status: p.status, Err: fmt.Errorf("refused")}
	}
	return p.Provider.(provider.BatchUserPutter).PutUsers(ctx, users)
}

// A 400 that names no entry, or another permanent answer to a batch: the
// relay finds the bad one by halves (a single PUT at the end, which TalkJS
// refuses for it alone), and only its intent goes dead.
func TestBatchSyncBisectsANamelessRefusal(t *testing.T) {
	t.Parallel()
	for _, status := range []int{400, 422} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			t.Parallel()
			testBisect(t, status)
		})
	}
}

func testBisect(t *testing.T, status int) {
	b := setup(t, faketalkjs.Faults{RejectUserIDs: []string{"buyer-c005"}})
	p := &refuseNameless{Provider: b.client(t, testSecret), bad: "buyer-c005", status: status}
	r, err := relay.New(b.pool, p, withLogs(testConfig("r1"), b))
	if err != nil {
		t.Fatal(err)
	}
	intents := paddedOrders(16) // 17 users
	ids := b.insertSQL(t, intents)
	if err := r.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	c := b.waitSettled(t, 30*time.Second)
	if c["done"] != 15 || c["dead"] != 1 {
		t.Fatalf("states = %v, want 15 done and 1 dead", c)
	}
	if state, _, _ := b.intentState(t, ids[5]); state != "dead" {
		t.Errorf("intent 5 is %s, want dead", state)
	}
	b.checkDelivered(t, slices.Delete(slices.Clone(intents), 5, 6))
	// 17 users, halved while refused: 17 -> 8+9 -> 4+4 -> 2+2 -> single PUTs.
	if n := p.calls.Load(); n < 3 || n > 10 {
		t.Errorf("%d batch calls, want a search by halves (at most 10)", n)
	}
	// The search ends in a batch of two, sent as two single PUTs.
	if n := b.routes()[faketalkjs.RouteUserPut]; n < 1 || n > 2 {
		t.Errorf("%d single PUTs, want 1 or 2 (the bad user, found)", n)
	}
}

// BenchmarkDrainCallsPerIntent measures the API calls a backlog costs:
// 2,000 intents (per op), each with two users TalkJS does not have yet, a
// conversation and one message POST, inserted before a relay with the
// daemon's default settings (an adaptive rate limit) starts; against an
// API without a limit, and one limited to 100 requests/s (burst 100, then
// 429 with Retry-After) that the relay is not told of. Reports the fake's
// requests (429s included) per intent.
//
//	go test ./relay -run '^$' -bench DrainCallsPerIntent -benchtime 1x
func BenchmarkDrainCallsPerIntent(b *testing.B) {
	for _, api := range []struct {
		name   string
		faults faketalkjs.Faults
	}{
		{"api=unlimited", faketalkjs.Faults{}},
		{"api=100rps", faketalkjs.Faults{RateLimit: 100, Burst: 100}},
	} {
		b.Run(api.name, func(b *testing.B) { benchDrain(b, api.faults) })
	}
}

func benchDrain(b *testing.B, faults faketalkjs.Faults) {
	const perOp = 2000
	bd := setup(b, faults)
	n := perOp * b.N
	intents := make([]outbox.Intent, n)
	for i := range intents {
		in := orderIntent(fmt.Sprintf("drain-%d", i), i)
		in.Users[1].ID = fmt.Sprintf("seller-%d", i) // two new users
		intents[i] = in
	}
	for lo := 0; lo < n; lo += 500 {
		relaytest.InsertSQL(b, bd.pool, intents[lo:min(lo+500, n)])
	}
	b.ResetTimer()
	bd.startRelay(b, relay.Config{Name: "drain", RateAdaptive: true, Logger: slogTo(bd)}, testSecret)
	relaytest.WaitFor(b, 10*time.Minute, "the backlog delivered", func() bool {
		c := relaytest.Counts(b, bd.pool)
		return c["done"] == n
	})
	b.StopTimer()
	st := bd.fake.Stats()
	b.ReportMetric(float64(st.Requests)/float64(n), "calls/intent")
	b.ReportMetric(float64(st.Routes[faketalkjs.RouteUsersPut]+st.Routes[faketalkjs.RouteUserPut])/float64(n), "user-calls/intent")
	b.ReportMetric(float64(st.Statuses[429])/float64(max(st.Requests, 1)), "429-share")
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "intents/s")
}

// panicUsers panics in every batch users call.
type panicUsers struct{ provider.Provider }

func (panicUsers) PutUsers(context.Context, []provider.User) error { panic("batch users") }

// A bug in a batch call fails the intents it serves (retried later), not
// the relay.
func TestBatchSyncPanicFailsItsIntentsNotTheRelay(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	r, err := relay.New(b.pool, panicUsers{b.client(t, testSecret)}, withLogs(slowRetries(testConfig("r1")), b))
	if err != nil {
		t.Fatal(err)
	}
	ids := b.insertSQL(t, paddedOrders(3))
	if err := r.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	waitFor(t, 20*time.Second, "the intents to fail their attempt", func() bool {
		return b.count(t, `SELECT count(*) FROM outbox.intents WHERE id = ANY ($1) AND state = 'pending' AND attempts = 1
			AND last_error LIKE '%panic in user sync%'`, ids) == 3
	})
	if n := b.fake.Stats().Requests; n != 0 {
		t.Errorf("the fake saw %d requests, want none", n)
	}
}

// Claim batches delivered at the same time share a PUT of the same
// content under way: the seller, carried by every intent, is sent by the
// first batch's call, and the batches claimed while it is in flight (the
// fake answers after a second) wait for it instead of sending it again.
func TestBatchSyncSharesInFlightPutsAcrossClaimBatches(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{Latency: time.Second})
	intents := paddedOrders(50)
	b.insertSQL(t, intents)
	cfg := testConfig("r1")
	cfg.BatchSize = 10 // five claim batches at least
	b.startRelay(t, cfg, testSecret)
	if c := b.waitSettled(t, 60*time.Second); c["done"] != 50 {
		t.Fatalf("states = %v, want 50 done", c)
	}
	b.checkDelivered(t, intents)
	sent := b.count(t, `SELECT count(DISTINCT coalesce(call_id::text, id::text)) FROM outbox.attempts
		WHERE target = 'seller' AND outcome = 'ok'`)
	shared := b.count(t, `SELECT count(*) FROM outbox.attempts
		WHERE target = 'seller' AND outcome = 'skipped' AND error LIKE '%concurrent delivery%'`)
	t.Logf("seller sent in %d calls, %d intents waited for another batch's", sent, shared)
	if sent < 1 || sent >= 5 || shared == 0 {
		t.Errorf("seller sent in %d calls (%d intents waited for another batch's), want fewer calls than claim batches (5)", sent, shared)
	}
}
