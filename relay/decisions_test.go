package relay

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider"
)

func perr(kind provider.Kind, status int, retryAfter time.Duration) error {
	return fmt.Errorf("put user: %w", &provider.Error{Kind: kind, Status: status, RetryAfter: retryAfter, Err: errors.New("x")})
}

func TestUnitAnswerOf(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		err  error
		want callAnswer
	}{
		{"success", nil, callAnswer{kind: answerOK}},
		{"cancelled", context.Canceled, callAnswer{kind: answerNothing}},
		{"not an API answer", errors.New("payload: bad json"), callAnswer{kind: answerNothing}},
		{"401", perr(provider.Auth, 401, 0), callAnswer{kind: answerAuth}},
		{"503", perr(provider.Retryable, 503, 0), callAnswer{kind: answerRetryable}},
		{"no answer", perr(provider.Retryable, 0, 0), callAnswer{kind: answerRetryable}},
		{"429 with Retry-After", perr(provider.RateLimited, 429, 3*time.Second), callAnswer{kind: answerLimited, retryAfter: 3 * time.Second}},
		{"client's own limiter", perr(provider.RateLimited, 0, time.Second), callAnswer{kind: answerNothing}},
		{"400", perr(provider.Permanent, 400, 0), callAnswer{kind: answerJudged}},
	} {
		if got := answerOf(tc.err); got != tc.want {
			t.Errorf("%s: answerOf = %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestUnitGateStep(t *testing.T) {
	t.Parallel()
	open := gateState{}
	failing := gateState{consecutive: 2, limited: 1}
	breaker := gateState{consecutive: 3, reason: pauseBreaker}
	probing := gateState{consecutive: 3, reason: pauseBreaker, probing: true}
	authProbing := gateState{reason: pauseAuth, probing: true}
	ok := callAnswer{kind: answerOK}
	retryable := callAnswer{kind: answerRetryable}
	for _, tc := range []struct {
		name  string
		s     gateState
		a     callAnswer
		stale bool
		want  gateChange
	}{
		{"success resets the counts", failing, ok, false, gateChange{next: open}},
		{"a failure below the threshold counts", failing, callAnswer{kind: answerRetryable}, false,
			gateChange{next: gateState{consecutive: 3, limited: 1, reason: pauseBreaker}, setPause: true}},
		{"a first failure", open, retryable, false, gateChange{next: gateState{consecutive: 1}}},
		{"the threshold opens the breaker", gateState{consecutive: 2}, retryable, false,
			gateChange{next: gateState{consecutive: 3, reason: pauseBreaker}, setPause: true}},
		{"open: a failure with no probe in flight counts, nothing else", breaker, retryable, false,
			gateChange{next: gateState{consecutive: 4, reason: pauseBreaker}}},
		{"open: the probe's failure schedules the next probe", probing, retryable, false,
			gateChange{next: gateState{consecutive: 4, reason: pauseBreaker}, endProbe: true}},
		{"open: a stale failure does not end the probe", probing, retryable, true,
			gateChange{next: gateState{consecutive: 4, reason: pauseBreaker, probing: true}}},
		{"open: a probe's success closes", probing, ok, false, gateChange{next: gateState{}, setPause: true}},
		{"open: a stale success changes nothing", probing, ok, true, gateChange{next: probing}},
		{"open: a 400 closes the breaker", breaker, callAnswer{kind: answerJudged}, false,
			gateChange{next: gateState{}, setPause: true}},
		{"open: a stale 400 changes nothing", breaker, callAnswer{kind: answerJudged}, true, gateChange{next: breaker}},
		{"a 400 leaves an auth pause", authProbing, callAnswer{kind: answerJudged}, false, gateChange{next: authProbing}},
		{"401 pauses", open, callAnswer{kind: answerAuth}, false, gateChange{next: gateState{reason: pauseAuth}, setPause: true}},
		{"401 turns the breaker into an auth pause", breaker, callAnswer{kind: answerAuth}, false,
			gateChange{next: gateState{consecutive: 3, reason: pauseAuth}, setPause: true}},
		{"auth paused: the probe's 401 schedules the next", authProbing, callAnswer{kind: answerAuth}, false,
			gateChange{next: gateState{reason: pauseAuth}, endProbe: true}},
		{"429 holds every call, breaker untouched", failing, callAnswer{kind: answerLimited, retryAfter: 2 * time.Second}, false,
			gateChange{next: gateState{consecutive: 2, limited: 2}, hold: 2 * time.Second}},
		{"nothing about the API", probing, callAnswer{kind: answerNothing}, false, gateChange{next: probing}},
	} {
		if got := gateStep(tc.s, tc.a, tc.stale, 3); got != tc.want {
			t.Errorf("%s: gateStep = %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestUnitRateLimitHold(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		retryAfter time.Duration
		limited    int
		want       time.Duration
	}{
		{3 * time.Second, 1, 3 * time.Second},
		{time.Hour, 1, maxRetryAfter},
		{0, 1, time.Second},
		{0, 2, 2 * time.Second},
		{0, 4, 8 * time.Second},
		{0, 6, maxRateLimitWait},
		{0, 100, maxRateLimitWait},
	} {
		if got := rateLimitHold(tc.retryAfter, tc.limited); got != tc.want {
			t.Errorf("rateLimitHold(%s, %d) = %s, want %s", tc.retryAfter, tc.limited, got, tc.want)
		}
	}
}

func TestUnitBackoff(t *testing.T) {
	t.Parallel()
	p := RetryPolicy{Base: time.Second, Max: time.Minute}
	for _, tc := range []struct {
		attempt int
		ceiling time.Duration // the result lies in [ceiling/2, ceiling]
	}{
		{0, time.Second},
		{1, time.Second},
		{2, 2 * time.Second},
		{6, 32 * time.Second},
		{7, time.Minute},
		{39, time.Minute},
		{1000, time.Minute}, // no overflow
	} {
		for range 50 {
			if got := p.backoff(tc.attempt); got < tc.ceiling/2 || got > tc.ceiling {
				t.Fatalf("backoff(%d) = %s, want within [%s, %s]", tc.attempt, got, tc.ceiling/2, tc.ceiling)
			}
		}
	}
}

func TestUnitReleases(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("x: %w", errLeaseExpired), true},
		{fmt.Errorf("x: %w", errPaused), true},
		{context.Canceled, true},
		{context.DeadlineExceeded, true},
		{perr(provider.Retryable, 0, 0), false}, // an API's "no answer" is its fault
		{errors.New("boom"), false},
	} {
		if got := releases(tc.err); got != tc.want {
			t.Errorf("releases(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestUnitWorstError(t *testing.T) {
	t.Parallel()
	auth, perm, limited, retry, other := perr(provider.Auth, 401, 0), perr(provider.Permanent, 400, 0),
		perr(provider.RateLimited, 429, 0), perr(provider.Retryable, 503, 0), errors.New("other")
	for _, tc := range []struct {
		errs []error
		want error
	}{
		{nil, nil},
		{[]error{nil, nil}, nil},
		{[]error{other, retry}, retry},
		{[]error{retry, limited}, limited},
		{[]error{limited, perm, retry}, perm},
		{[]error{perm, auth, other}, auth},
	} {
		// The very error given, not one like it: each case's errors differ
		// in kind, and none wraps another.
		if got := worstError(tc.errs); !errors.Is(got, tc.want) {
			t.Errorf("worstError(%v) = %v, want %v", tc.errs, got, tc.want)
		}
	}
}

func TestUnitDecide(t *testing.T) {
	t.Parallel()
	retry := RetryPolicy{Base: time.Second, Max: time.Minute}
	for _, tc := range []struct {
		name     string
		err      error
		step     callStep
		attempt  int
		skipped  []string
		outcome  outcome
		minDelay time.Duration
		maxDelay time.Duration
		forget   bool
	}{
		{"shutdown releases", context.Canceled, stepMessages, 3, nil, outcomeRelease, 0, 0, false},
		{"lost lease releases", errLeaseExpired, stepUser, 1, nil, outcomeRelease, 0, 0, false},
		{"400 is dead", perr(provider.Permanent, 400, 0), stepConversation, 1, nil, outcomeDead, 0, 0, false},
		{"400 after a skipped user: again, the user forgotten", perr(provider.Permanent, 400, 0), stepMessages, 1,
			[]string{"u1"}, outcomeRetry, 500 * time.Millisecond, time.Second, true},
		{"400 after a skipped user, second attempt: dead, forgotten", perr(provider.Permanent, 400, 0), stepMessages, 2,
			[]string{"u1"}, outcomeDead, 0, 0, true},
		{"refused by the client after a skip: dead, kept", perr(provider.Permanent, 0, 0), stepMessages, 1,
			[]string{"u1"}, outcomeDead, 0, 0, false},
		{"429: released after Retry-After", perr(provider.RateLimited, 429, 5*time.Second), stepUser, 1, nil,
			outcomeRelease, 5 * time.Second, 5 * time.Second, false},
		{"429 without Retry-After: at least Base", perr(provider.RateLimited, 429, 0), stepUser, 1, nil,
			outcomeRelease, time.Second, time.Second, false},
		{"401 releases", perr(provider.Auth, 401, 0), stepUser, 1, nil, outcomeRelease, 0, 0, false},
		{"503 backs off by attempt", perr(provider.Retryable, 503, 0), stepUser, 3, nil, outcomeRetry,
			2 * time.Second, 4 * time.Second, false},
		{"503 with a longer Retry-After", perr(provider.Retryable, 503, 30*time.Second), stepUser, 1, nil,
			outcomeRetry, 30 * time.Second, 30 * time.Second, false},
		{"invalid payload is dead", fmt.Errorf("x: %w", outbox.ErrInvalid), stepUser, 1, nil, outcomeDead, 0, 0, false},
		{"failure before any step is dead", errors.New("payload: bad json"), "", 1, nil, outcomeDead, 0, 0, false},
		{"other failure retries", errors.New("boom"), stepMessages, 1, nil, outcomeRetry,
			500 * time.Millisecond, time.Second, false},
	} {
		res := &result{intent: &claimedIntent{id: 1, attempt: tc.attempt}, skipped: tc.skipped}
		decideOutcome(res, tc.err, tc.step, retry)
		if res.outcome != tc.outcome || res.delay < tc.minDelay || res.delay > tc.maxDelay ||
			(res.forget != nil) != tc.forget || res.err == "" {
			t.Errorf("%s: outcome %q delay %s forget %v err %q; want %q in [%s, %s] forget %v",
				tc.name, res.outcome, res.delay, res.forget, res.err, tc.outcome, tc.minDelay, tc.maxDelay, tc.forget)
		}
	}
}
