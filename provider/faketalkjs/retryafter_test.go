package faketalkjs

import (
	"net/http"
	"testing"
	"time"
)

// The rate limit's 429 says when a token frees for the refused request:
// behind the requests already queued for theirs, in whole seconds rounded
// up. One token a second, a bucket of one and a queue of two: with the
// token taken and two requests queued (their tokens due in 1s and 2s),
// the next request's token is 3s away.
func TestRateLimitRetryAfterCountsTheQueue(t *testing.T) {
	t.Parallel()
	now := time.Now()
	clock := func() time.Time { return now }
	b := setup(t, Config{Faults: Faults{RateLimit: 1, Burst: 1, QueueLength: 2}, Clock: clock})
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
	rep := b.do(t, "PUT", userPath("u1"), aliceJSON)
	if rep.status != http.StatusTooManyRequests || rep.header.Get("Retry-After") != "3" {
		t.Fatalf("queue full: status %d, Retry-After %q; want 429 with 3", rep.status, rep.header.Get("Retry-After"))
	}
	close(release)
	for range 2 {
		if rep := <-queued; rep.status != http.StatusOK {
			t.Fatalf("queued request: status %d, want 200", rep.status)
		}
	}
}
