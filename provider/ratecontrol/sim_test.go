package ratecontrol

import (
	"math"
	"testing"
	"time"
)

// simAPI is an API in simulated time: a token bucket of rate limit and
// burst, answering 429 with a Retry-After of whole seconds (rounded up)
// when it is empty, as the fake does.
type simAPI struct {
	limit, burst float64
	tokens       float64
	last         time.Duration
}

// call decides a call sent at now: 0 for answered, else the 429's
// Retry-After.
func (a *simAPI) call(now time.Duration) time.Duration {
	a.tokens = min(a.burst, a.tokens+a.limit*(now-a.last).Seconds())
	a.last = now
	if a.tokens >= 1 {
		a.tokens--
		return 0
	}
	wait := time.Duration((1 - a.tokens) / a.limit * float64(time.Second))
	return max(time.Second, (wait+time.Second-1)/time.Second*time.Second)
}

// simCaller is one relay: a controller, a client-side token bucket of one
// second of the controller's rate, a hold for the latest Retry-After (the
// bucket keeps filling meanwhile), and workers calls in flight at most.
type simCaller struct {
	ctl      *Controller
	clk      *clock
	tokens   float64
	holdTill time.Duration
	inflight []simCall
	workers  int

	sent, refused int
	lateAnswered  int // answered over the second half
}

type simCall struct {
	due        time.Duration
	retryAfter time.Duration
}

type simResult struct {
	calls, refused int
	// goodput is the answered calls per second over the second half.
	goodput float64
}

// simulate runs callers against api for d of simulated time, in steps of
// a millisecond, every call answered after latency.
func simulate(t *testing.T, api *simAPI, callers, workers int, latency, d time.Duration) simResult {
	t.Helper()
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	cs := make([]*simCaller, callers)
	for i := range cs {
		clk := &clock{now: start}
		ctl, err := New(Config{Initial: 10, Floor: 1, Clock: clk.Now})
		if err != nil {
			t.Fatal(err)
		}
		cs[i] = &simCaller{ctl: ctl, clk: clk, workers: workers, tokens: 1}
	}
	const step = time.Millisecond
	for now := time.Duration(0); now < d; now += step {
		for _, c := range cs {
			c.clk.now = start.Add(now)
			kept := c.inflight[:0]
			for _, call := range c.inflight {
				if call.due > now {
					kept = append(kept, call)
					continue
				}
				if call.retryAfter > 0 {
					c.refused++
					c.ctl.RateLimited(call.retryAfter)
					c.holdTill = max(c.holdTill, now+call.retryAfter)
				} else {
					if now >= d/2 {
						c.lateAnswered++
					}
					c.ctl.Answered(latency)
				}
			}
			c.inflight = kept
			r := c.ctl.Rate()
			c.tokens = min(math.Ceil(r), c.tokens+r*step.Seconds())
			if now < c.holdTill {
				continue
			}
			for len(c.inflight) < c.workers && c.tokens >= 1 {
				c.tokens--
				c.sent++
				c.inflight = append(c.inflight, simCall{due: now + latency, retryAfter: api.call(now)})
			}
		}
	}
	var res simResult
	late := 0
	for _, c := range cs {
		res.calls += c.sent
		res.refused += c.refused
		late += c.lateAnswered
	}
	res.goodput = float64(late) / (d / 2).Seconds()
	return res
}

// The controller behind token-bucket APIs, in simulated time: callers
// sharing one API's limit, each with its own controller, limiter, hold for
// Retry-After and 25 calls in flight, answered after 50 ms. Deterministic,
// so the bounds are the controller's, not the machine's: the share of
// calls refused with 429 (the budget is 2%) and the calls answered
// per second over the second half of five minutes.
func TestSimulatedAPIs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		api        simAPI
		callers    int
		maxRefused float64 // share of calls
		minAnswers float64 // per second
	}{
		{"100/s, 1 caller", simAPI{limit: 100, burst: 100}, 1, 0.005, 95},
		{"100/s, 3 callers", simAPI{limit: 100, burst: 100}, 3, 0.02, 95},
		{"20/s, 3 callers", simAPI{limit: 20, burst: 20}, 3, 0.03, 19},
		{"1000/s, burst 1000, 3 callers", simAPI{limit: 1000, burst: 1000}, 3, 0.01, 850},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			api := tt.api
			res := simulate(t, &api, tt.callers, 25, 50*time.Millisecond, 300*time.Second)
			share := float64(res.refused) / float64(res.calls)
			t.Logf("calls %d, 429s %.2f%%, answered %.1f/s over the second half", res.calls, 100*share, res.goodput)
			if share > tt.maxRefused {
				t.Errorf("429s are %.2f%% of calls, want at most %.1f%%", 100*share, 100*tt.maxRefused)
			}
			if res.goodput < tt.minAnswers {
				t.Errorf("%.1f calls answered per second, want at least %.0f", res.goodput, tt.minAnswers)
			}
		})
	}
}
