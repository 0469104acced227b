package faketalkjs

import (
	"net/http"
	"testing"
)

// The rate limit's 429 says when a token frees for the refused request:
// behind the requests already queued for theirs, in whole seconds rounded
// up. One token a second, a bucket of one and a queue of two: with the
// token taken and two requests queued (their tokens due in 1s and 2s),
// the next request's token is 3s away.
func TestRateLimitRetryAfterCountsTheQueue(t *testing.T) {
	t.Parallel()
	_, rep, queued := fillRateQueue(t, 1)
	if rep.status != http.StatusTooManyRequests || rep.header.Get("Retry-After") != "3" {
		t.Fatalf("queue full: status %d, Retry-After %q; want 429 with 3", rep.status, rep.header.Get("Retry-After"))
	}
	for _, rep := range queued {
		if rep.status != http.StatusOK {
			t.Fatalf("queued request: status %d, want 200", rep.status)
		}
	}
}
