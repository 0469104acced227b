package faketalkjs

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestFaultKnobs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name           string
		faults         Faults
		wantStatus     int  // 0: the connection is closed without a response
		wantApplied    bool // the user PUT took effect
		wantRetryAfter string
		wantFault      string
	}{
		{"none", Faults{}, http.StatusOK, true, "", ""},
		{"fail before", Faults{FailBefore: 1}, http.StatusInternalServerError, false, "", FaultFailBefore},
		{"fail after", Faults{FailAfter: 1}, http.StatusInternalServerError, true, "", FaultFailAfter},
		{"too many requests, default Retry-After", Faults{TooManyRequests: 1}, http.StatusTooManyRequests, false, "1", FaultTooManyRequests},
		{"too many requests, Retry-After rounded up", Faults{TooManyRequests: 1, RetryAfter: 2100 * time.Millisecond}, http.StatusTooManyRequests, false, "3", FaultTooManyRequests},
		{"too many requests, no Retry-After", Faults{TooManyRequests: 1, RetryAfter: -1}, http.StatusTooManyRequests, false, "", FaultTooManyRequests},
		{"drop after", Faults{DropAfter: 1}, 0, true, "", FaultDropAfter},
		{"down", Faults{Down: true}, 0, false, "", FaultDown},
		{"rejected user", Faults{RejectUserIDs: []string{"u1"}}, http.StatusBadRequest, false, "", FaultRejectUser},
		{"other user rejected", Faults{RejectUserIDs: []string{"u9"}}, http.StatusOK, true, "", ""},
		{"user applied then 500", Faults{FailAfterUserIDs: []string{"u1"}}, http.StatusInternalServerError, true, "", FaultFailAfter},
		{"other user applied then 500", Faults{FailAfterUserIDs: []string{"u9"}}, http.StatusOK, true, "", ""},
		{"probability zero", Faults{FailBefore: 0, FailAfter: 0, DropAfter: 0}, http.StatusOK, true, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, Config{Faults: tt.faults})
			rep, err := b.send(t, request{method: "PUT", path: userPath("u1"), body: aliceJSON})
			switch {
			case tt.wantStatus == 0 && err == nil:
				t.Fatalf("got status %d, want the connection closed", rep.status)
			case tt.wantStatus != 0 && err != nil:
				t.Fatalf("request failed: %v", err)
			case rep.status != tt.wantStatus:
				t.Fatalf("status %d, want %d", rep.status, tt.wantStatus)
			}
			if got := rep.header.Get("Retry-After"); tt.wantStatus != 0 && got != tt.wantRetryAfter {
				t.Fatalf("Retry-After %q, want %q", got, tt.wantRetryAfter)
			}
			if _, applied := b.fake.User("u1"); applied != tt.wantApplied {
				t.Fatalf("applied = %t, want %t", applied, tt.wantApplied)
			}
			st := b.fake.Stats()
			if tt.wantFault != "" && st.Faults[tt.wantFault] != 1 {
				t.Fatalf("Faults = %v, want one %s", st.Faults, tt.wantFault)
			}
			if tt.wantFault != "" && st.Rejections != 0 {
				t.Fatalf("an injected fault counted as a rejection: %+v", st)
			}
		})
	}
}

func TestFaultsSpareAdminRoutes(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{Faults: Faults{Down: true, FailBefore: 1, Latency: time.Hour}})
	rep := b.do(t, "GET", "/_fake/stats", "")
	if rep.status != http.StatusOK {
		t.Fatalf("GET /_fake/stats while down: %d", rep.status)
	}
	rep = b.do(t, "PUT", "/_fake/faults", `{}`)
	if rep.status != http.StatusOK {
		t.Fatalf("PUT /_fake/faults while down: %d %s", rep.status, rep.body)
	}
	b.must(t, "PUT", userPath("u1"), aliceJSON)
}

// Hang holds a request unanswered and unapplied until its client gives up,
// and lets the handler go then (else the server's Close would wait).
func TestHangNeverAnswers(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{Faults: Faults{Hang: true}})
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	rep, err := b.send(t, request{method: "PUT", path: userPath("u1"), body: aliceJSON, ctx: ctx})
	if err == nil {
		t.Fatalf("a hung request was answered: status %d", rep.status)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("request failed after %s, before the client's deadline: %v", d, err)
	}
	if _, ok := b.fake.User("u1"); ok {
		t.Fatal("a hung request was applied")
	}
	if st := b.fake.Stats(); st.Faults[FaultHang] != 1 || len(st.Statuses) != 0 {
		t.Fatalf("stats = %+v, want one hang and no status", st)
	}
	b.fake.SetFaults(Faults{})
	b.must(t, "PUT", userPath("u1"), aliceJSON)
}

func TestLatencyRespectsRequestContext(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{Faults: Faults{Latency: time.Hour}})
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if _, err := b.send(t, request{method: "PUT", path: userPath("u1"), body: aliceJSON, ctx: ctx}); err == nil {
		t.Fatal("request returned before the latency")
	}
	if _, ok := b.fake.User("u1"); ok {
		t.Fatal("a request abandoned during latency was applied")
	}
	// The handler returns promptly once the client is gone; otherwise the
	// server's Close in cleanup would hang for an hour.

	b.fake.SetFaults(Faults{Latency: 10 * time.Millisecond})
	start := time.Now()
	b.must(t, "PUT", userPath("u1"), aliceJSON)
	if d := time.Since(start); d < 10*time.Millisecond {
		t.Fatalf("answered in %s, before the latency", d)
	}
}

func TestRateLimit(t *testing.T) {
	t.Parallel()
	// A frozen clock makes the bucket deterministic: it never refills.
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); defer mu.Unlock(); now = now.Add(d) }

	b := setup(t, Config{Faults: Faults{RateLimit: 0.5, Burst: 2}, Clock: clock})
	// Tokens are signed for the real clock; the fake's clock is a fixed date.
	b.token = testSecret

	for range 2 {
		b.must(t, "PUT", userPath("u1"), aliceJSON)
	}
	rep := b.do(t, "PUT", userPath("u1"), aliceJSON)
	if rep.status != http.StatusTooManyRequests || rep.header.Get("Retry-After") != "2" {
		t.Fatalf("over the burst: status %d, Retry-After %q; want 429 with 2 (one token per 2s)", rep.status, rep.header.Get("Retry-After"))
	}
	// A refused request does not use up the token being refilled.
	advance(1500 * time.Millisecond)
	if rep := b.do(t, "PUT", userPath("u1"), aliceJSON); rep.header.Get("Retry-After") != "1" {
		t.Fatalf("after 1.5s: status %d, Retry-After %q; want 1 (0.5s, rounded up)", rep.status, rep.header.Get("Retry-After"))
	}
	advance(500 * time.Millisecond)
	b.must(t, "PUT", userPath("u1"), aliceJSON)

	if got := b.fake.Stats().Faults[FaultRateLimit]; got != 2 {
		t.Fatalf("rate_limit faults = %d, want 2", got)
	}
	b.fake.SetFaults(Faults{})
	b.must(t, "PUT", userPath("u1"), aliceJSON)
}

// With QueueLength, requests over the rate wait their turn (answered late)
// while the queue has room; only a request finding it full gets 429.
// fillRateQueue sets up a fake whose bucket of one never refills (a frozen
// clock) and holds rate tokens a second with a queue of two, takes the
// token, queues two requests, and returns the fake, the answer to the
// request refused because the queue is full, and the answers of the two
// queued ones once they are released.
func fillRateQueue(t *testing.T, rate float64) (*bundle, reply, []reply) {
	t.Helper()
	now := time.Now()
	clock := func() time.Time { return now }
	b := setup(t, Config{Faults: Faults{RateLimit: rate, Burst: 1, QueueLength: 2}, Clock: clock})
	release := make(chan time.Time)
	b.fake.mu.Lock()
	b.fake.after = func(time.Duration) <-chan time.Time { return release }
	b.fake.mu.Unlock()
	b.must(t, "PUT", userPath("u1"), aliceJSON) // takes the token

	queued := make(chan reply, 2)
	for range 2 {
		go func() {
			rep, _ := b.send(t, request{method: "PUT", path: userPath("u1"), body: aliceJSON})
			queued <- rep
		}()
	}
	waitFor(t, "two requests queued", func() bool {
		b.fake.mu.Lock()
		defer b.fake.mu.Unlock()
		return b.fake.queued == 2
	})
	refused := b.do(t, "PUT", userPath("u1"), aliceJSON)
	close(release)
	return b, refused, []reply{<-queued, <-queued}
}

func TestRateLimitQueue(t *testing.T) {
	t.Parallel()
	// A frozen clock: the bucket never refills. Queued requests wait until
	// released.
	b, rep, queued := fillRateQueue(t, 10)
	if rep.status != http.StatusTooManyRequests || rep.header.Get("Retry-After") != "1" {
		t.Fatalf("queue full: status %d, Retry-After %q; want 429 with 1", rep.status, rep.header.Get("Retry-After"))
	}
	for _, rep := range queued {
		if rep.status != http.StatusOK {
			t.Fatalf("queued request: status %d, want 200", rep.status)
		}
	}
	st := b.fake.Stats()
	if st.Faults[FaultRateQueued] != 2 || st.Faults[FaultRateLimit] != 1 || st.Statuses[200] != 3 {
		t.Fatalf("stats = %+v; want 2 queued, 1 rate limited, 3 answered 200", st)
	}

	// A client that gives up while queued leaves the queue.
	b.fake.mu.Lock()
	b.fake.after = func(time.Duration) <-chan time.Time { return nil } // never
	b.fake.mu.Unlock()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		_, err := b.send(t, request{method: "PUT", path: userPath("u2"), body: aliceJSON, ctx: ctx})
		done <- err
	}()
	waitFor(t, "a request queued", func() bool {
		b.fake.mu.Lock()
		defer b.fake.mu.Unlock()
		return b.fake.queued == 1
	})
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("request abandoned in the queue: error %v, want context.Canceled", err)
	}
	waitFor(t, "the queue empty", func() bool {
		b.fake.mu.Lock()
		defer b.fake.mu.Unlock()
		return b.fake.queued == 0
	})
	if _, stored := b.fake.User("u2"); stored {
		t.Fatal("a request abandoned in the queue was applied")
	}
}

// waitFor polls cond until it holds, failing the test after 5s. It is
// relaytest.WaitFor for this package's own tests, which cannot import
// relaytest (relaytest imports this package).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

func TestSeedMakesFaultsDeterministic(t *testing.T) {
	t.Parallel()
	statuses := func(seed uint64) []int {
		b := setup(t, Config{Seed: seed, Faults: Faults{FailBefore: 0.3, TooManyRequests: 0.2}})
		var out []int
		for range 40 {
			out = append(out, b.do(t, "PUT", userPath("u1"), aliceJSON).status)
		}
		return out
	}
	a, again, other := statuses(42), statuses(42), statuses(43)
	if !slices.Equal(a, again) {
		t.Fatalf("same seed, different faults:\n%v\n%v", a, again)
	}
	if slices.Equal(a, other) {
		t.Fatalf("different seeds, same 40 outcomes: %v", a)
	}
	for _, want := range []int{200, 429, 500} {
		if !slices.Contains(a, want) {
			t.Fatalf("no %d among %v", want, a)
		}
	}
}

func TestAdminAPI(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})

	rep := b.do(t, "PUT", "/_fake/faults", `{"failBefore":0.25,"latency":"20ms","retryAfter":1500,"rejectUserIds":["u9"],"failAfterUserIds":["u8"],"rateLimit":5,"queueLength":7,"batchUnsupported":405}`)
	if rep.status != http.StatusOK {
		t.Fatalf("PUT faults: %d %s", rep.status, rep.body)
	}
	want := Faults{FailBefore: 0.25, Latency: 20 * time.Millisecond, RetryAfter: 1500 * time.Millisecond, RejectUserIDs: []string{"u9"}, FailAfterUserIDs: []string{"u8"}, RateLimit: 5,
		QueueLength: 7, BatchUnsupported: 405}
	if got := b.fake.Faults(); !faultsEqual(got, want) {
		t.Fatalf("faults = %+v, want %+v", got, want)
	}

	rep = b.do(t, "PATCH", "/_fake/faults", `{"down":true,"hang":true}`)
	want.Down, want.Hang = true, true
	if got := b.fake.Faults(); rep.status != http.StatusOK || !faultsEqual(got, want) {
		t.Fatalf("PATCH: %d, faults = %+v, want %+v", rep.status, got, want)
	}
	rep = b.do(t, "GET", "/_fake/faults", "")
	var round Faults
	if err := json.Unmarshal([]byte(rep.body), &round); err != nil || !faultsEqual(round, want) {
		t.Fatalf("GET faults = %s (%v)", rep.body, err)
	}
	if !strings.Contains(rep.body, `"latency":"20ms"`) {
		t.Fatalf("durations not written as strings: %s", rep.body)
	}

	for _, bad := range []string{`{"failBefore":2}`, `{"latency":"soon"}`, `{"latency":-5}`, `{"typo":1}`, `{"burst":-1}`} {
		if rep := b.do(t, "PUT", "/_fake/faults", bad); rep.status != http.StatusBadRequest {
			t.Fatalf("PUT faults %s: %d, want 400", bad, rep.status)
		}
	}
	if got := b.fake.Faults(); !faultsEqual(got, want) {
		t.Fatalf("refused update changed faults to %+v", got)
	}

	b.do(t, "PUT", "/_fake/faults", `{}`)
	b.must(t, "PUT", userPath("u1"), aliceJSON)
	rep = b.do(t, "GET", "/_fake/stats", "")
	var st Stats
	if err := json.Unmarshal([]byte(rep.body), &st); err != nil || st.Requests != 1 || st.Statuses[200] != 1 || st.Users != 1 {
		t.Fatalf("GET stats = %s (%v)", rep.body, err)
	}
	if rep := b.do(t, "POST", "/_fake/reset", ""); rep.status != http.StatusOK {
		t.Fatalf("reset: %d", rep.status)
	}
	if st := b.fake.Stats(); st.Requests != 0 || st.Users != 1 {
		t.Fatalf("after reset: %+v", st)
	}
	b.do(t, "POST", "/_fake/reset?data=true", "")
	if b.fake.UserCount() != 0 {
		t.Fatal("reset?data=true kept users")
	}
	for _, r := range []struct{ method, path string }{{"POST", "/_fake/stats"}, {"GET", "/_fake/reset"}, {"DELETE", "/_fake/faults"}} {
		if rep := b.do(t, r.method, r.path, ""); rep.status != http.StatusMethodNotAllowed {
			t.Fatalf("%s %s: %d, want 405", r.method, r.path, rep.status)
		}
	}
	if rep := b.do(t, "GET", "/_fake/nothing", ""); rep.status != http.StatusNotFound {
		t.Fatalf("unknown admin route: %d", rep.status)
	}
}

func faultsEqual(a, b Faults) bool {
	return slices.Equal(a.RejectUserIDs, b.RejectUserIDs) && slices.Equal(a.FailAfterUserIDs, b.FailAfterUserIDs) &&
		a.FailBefore == b.FailBefore && a.FailAfter == b.FailAfter &&
		a.TooManyRequests == b.TooManyRequests && a.RetryAfter == b.RetryAfter &&
		a.DropAfter == b.DropAfter && a.Latency == b.Latency &&
		a.RateLimit == b.RateLimit && a.Burst == b.Burst && a.Down == b.Down && a.Hang == b.Hang &&
		a.QueueLength == b.QueueLength && a.BatchUnsupported == b.BatchUnsupported
}

func TestSetFaultsClampsAndCopies(t *testing.T) {
	t.Parallel()
	ids := []string{"u1"}
	s := New(Config{AppID: testAppID, SecretKey: testSecret})
	s.SetFaults(Faults{FailBefore: 7, FailAfter: -1, Latency: -time.Second, RejectUserIDs: ids})
	ids[0] = "changed"
	got := s.Faults()
	if got.FailBefore != 1 || got.FailAfter != 0 || got.Latency != 0 || got.RejectUserIDs[0] != "u1" {
		t.Fatalf("faults = %+v", got)
	}
	if err := (Faults{FailBefore: 7}).Validate(); err == nil || !strings.Contains(err.Error(), "failBefore") {
		t.Fatalf("Validate = %v, want an error naming failBefore", err)
	}
}
