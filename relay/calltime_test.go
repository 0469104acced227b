package relay

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/provider"
)

// A call starts with at least 2/3 of its lease left (renewals come every
// third of it); its budget then still holds the longest provider timeout
// accepted, at every lease from the minimum up.
func TestUnitCallBudget(t *testing.T) {
	t.Parallel()
	tests := []struct {
		lease, left time.Duration
		want        time.Duration
		ok          bool
	}{
		{10 * time.Second, 10 * time.Second, 9 * time.Second, true},
		{10 * time.Second, 6667 * time.Millisecond, 5667 * time.Millisecond, true},
		{10 * time.Second, time.Second, 0, false},
		{10 * time.Second, 500 * time.Millisecond, -500 * time.Millisecond, false},
		{time.Second, time.Second, 900 * time.Millisecond, true},
		{time.Second, 667 * time.Millisecond, 567 * time.Millisecond, true},
		{time.Second, 100 * time.Millisecond, 0, false},
	}
	for _, tt := range tests {
		got, ok := callBudget(tt.left, tt.lease)
		if got != tt.want || ok != tt.ok {
			t.Errorf("callBudget(left %s, lease %s) = %s, %t; want %s, %t", tt.left, tt.lease, got, ok, tt.want, tt.ok)
		}
	}
	for _, lease := range []time.Duration{MinLease, 1500 * time.Millisecond, 3 * time.Second, DefaultLease, time.Minute, time.Hour} {
		cfg := Config{Lease: lease}
		left := lease - cfg.heartbeatInterval()
		budget, ok := callBudget(left, lease)
		if !ok || budget <= MaxCallTimeout(lease) {
			t.Errorf("lease %s: a call starting a heartbeat interval after a renewal gets %s, not more than the longest timeout accepted (%s)",
				lease, budget, MaxCallTimeout(lease))
		}
	}
}

// A provider timeout longer than half the lease is refused, naming both.
func TestUnitCheckCallTimeout(t *testing.T) {
	t.Parallel()
	tests := []struct {
		timeout, lease time.Duration
		ok             bool
	}{
		{5 * time.Second, 10 * time.Second, true},
		{500 * time.Millisecond, time.Second, true},
		{10 * time.Second, 10 * time.Second, false}, // the old defaults
		{5 * time.Second, time.Second, false},
		{0, time.Second, false},
	}
	for _, tt := range tests {
		err := checkCallTimeout(tt.timeout, tt.lease)
		if (err == nil) != tt.ok {
			t.Errorf("checkCallTimeout(%s, %s) = %v, want ok %t", tt.timeout, tt.lease, err, tt.ok)
		}
		if err != nil && (!strings.Contains(err.Error(), "timeout") || !strings.Contains(err.Error(), "Lease")) {
			t.Errorf("error %q does not name the timeout and the Lease", err)
		}
	}
}

func TestUnitLeaseMinimum(t *testing.T) {
	t.Parallel()
	for lease, ok := range map[time.Duration]bool{999 * time.Millisecond: false, 100 * time.Millisecond: false, time.Second: true, DefaultLease: true} {
		err := Config{Lease: lease}.withDefaults().validate()
		if (err == nil) != ok {
			t.Errorf("Lease %s: validate = %v, want ok %t", lease, err, ok)
		}
		if err != nil && !strings.Contains(err.Error(), "Lease") {
			t.Errorf("Lease %s: error %q does not name Lease", lease, err)
		}
	}
}

// What each way a call can end means for the attempt: only the delivery's
// own context ending (shutdown, lost lease) or a pause releases it; a call
// cut by its deadline is the API not answering, counted and retried.
func TestUnitCallOutcome(t *testing.T) {
	t.Parallel()
	r := &Relay{cfg: Config{Name: "unit"}.withDefaults()}
	budget := 900 * time.Millisecond
	deadline := fmt.Errorf("talkjs: PUT /x: %w", context.DeadlineExceeded) // a provider passing the context's error through
	tests := []struct {
		name        string
		err         error
		jobEnded    bool
		wantOutcome outcome
		wantKind    string // gate's view: "" when the gate sees nothing
		wantDelay   bool
	}{
		{"deadline passed, job alive", deadline, false, outcomeRetry, "retryable", true},
		{"bare deadline passed, job alive", context.DeadlineExceeded, false, outcomeRetry, "retryable", true},
		{"client says no answer", &provider.Error{Kind: provider.Retryable, Err: errors.New("PUT /x: no answer within 5s")}, false, outcomeRetry, "retryable", true},
		{"shutdown", fmt.Errorf("x: %w", context.Canceled), true, outcomeRelease, "", false},
		{"lease lost: job cancelled", context.Canceled, true, outcomeRelease, "", false},
		{"deadline, but the job ended too", deadline, true, outcomeRelease, "", false},
		{"lease ran out before the call", errLeaseExpired, false, outcomeRelease, "", false},
		{"paused", errPaused, false, outcomeRelease, "", false},
		{"client limiter refused", &provider.Error{Kind: provider.RateLimited, RetryAfter: 3 * time.Second, Err: errors.New("client-side rate limit")}, false, outcomeRelease, "", true},
		{"500", &provider.Error{Kind: provider.Retryable, Status: 500, Err: errors.New("boom")}, false, outcomeRetry, "retryable", true},
		{"400", &provider.Error{Kind: provider.Permanent, Status: 400, Err: errors.New("bad")}, false, outcomeDead, "permanent", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := noAnswer(tt.err, tt.jobEnded, budget)
			res := r.decide(&result{intent: &claimedIntent{id: 1, attempt: 1}}, err, stepUser)
			if res.outcome != tt.wantOutcome {
				t.Fatalf("outcome %s, want %s (error %v)", res.outcome, tt.wantOutcome, err)
			}
			if (res.delay > 0) != tt.wantDelay {
				t.Fatalf("delay %s, want a delay: %t", res.delay, tt.wantDelay)
			}
			var pe *provider.Error
			kind := ""
			if errors.As(err, &pe) && !(pe.Kind == provider.RateLimited && pe.Status == 0) {
				kind = pe.Kind.String()
			}
			if kind != tt.wantKind {
				t.Fatalf("the gate sees %q, want %q", kind, tt.wantKind)
			}
			if tt.wantKind == "retryable" && !strings.Contains(res.err, "no answer") && pe.Status == 0 {
				t.Fatalf("last_error %q does not say no answer came", res.err)
			}
		})
	}
}

// Calls cut by their deadline open the breaker like any other failure to
// answer.
func TestUnitNoAnswerOpensBreaker(t *testing.T) {
	t.Parallel()
	g := newGate(3, time.Now, nil)
	for range 3 {
		gen, _ := g.send(false)
		g.observe(noAnswer(context.DeadlineExceeded, false, time.Second), gen)
	}
	if got := g.paused(); got != pauseBreaker {
		t.Fatalf("after 3 calls with no answer: paused %q, want %q", got, pauseBreaker)
	}
}

// The client's own limiter refusing one call holds no other call; the
// API's 429 holds them all for its Retry-After.
func TestUnitClientLimiterRefusalHoldsNoOtherCall(t *testing.T) {
	t.Parallel()
	g := newGate(10, time.Now, nil)
	gen, _ := g.send(false)
	g.observe(&provider.Error{Kind: provider.RateLimited, RetryAfter: time.Minute, Err: errors.New("client-side rate limit")}, gen)
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	if held, err := g.waitCall(ctx); err != nil || held != 0 {
		t.Fatalf("after the client's limiter refused one call, the next waits (held %s): %v", held, err)
	}
	g.observe(&provider.Error{Kind: provider.RateLimited, Status: 429, RetryAfter: time.Minute, Err: errors.New("429")}, gen)
	ctx, cancel = context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if held, err := g.waitCall(ctx); err == nil || held <= 0 {
		t.Fatalf("after the API's 429 with Retry-After 1m, a call went at once (held %s)", held)
	}
}
