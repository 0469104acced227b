package ratecontrol

import (
	"math"
	"math/rand/v2"
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
	// noise is the share of calls answered 429 with a Retry-After of a
	// second whatever the rate (as the chaos suite's fake does), drawn
	// from rng; limit 0 is no limit.
	noise float64
	rng   *rand.Rand
}

// call decides a call sent at now: 0 for answered, else the 429's
// Retry-After.
func (a *simAPI) call(now time.Duration) time.Duration {
	if a.noise > 0 && a.rng.Float64() < a.noise {
		return time.Second
	}
	if a.limit == 0 {
		return 0
	}
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
	return simulateWith(t, api, callers, workers, latency, d, Config{Initial: 10, Floor: 1})
}

// simulateWith is simulate with each caller's controller configured by
// cfg (its Clock set by the simulation).
func simulateWith(t *testing.T, api *simAPI, callers, workers int, latency, d time.Duration, cfg Config) simResult {
	t.Helper()
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	cs := make([]*simCaller, callers)
	for i := range cs {
		clk := &clock{now: start}
		cfg.Clock = clk.Now
		ctl, err := New(cfg)
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
//
// Some APIs also refuse 2% of calls whatever the rate, as the chaos
// suite's soak does: those 429s pause each caller, and the controller
// must not let them hold its rate down. Its answers are bounded against
// callers holding a fixed 100 requests/s between them (the limit a relay
// used to be configured with), over three draws of the random 429s.
func TestSimulatedAPIs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		api        simAPI
		callers    int
		maxRefused float64 // share of calls
		minAnswers float64 // per second
		vsFixed    float64 // else: at least this × the answers at a fixed 100/s
	}{
		{"100/s, 1 caller", simAPI{limit: 100, burst: 100}, 1, 0.005, 95, 0},
		{"100/s, 3 callers", simAPI{limit: 100, burst: 100}, 3, 0.02, 95, 0},
		{"20/s, 3 callers", simAPI{limit: 20, burst: 20}, 3, 0.03, 19, 0},
		{"1000/s, burst 1000, 3 callers", simAPI{limit: 1000, burst: 1000}, 3, 0.01, 850, 0},
		{"no limit, 2% random 429s, 1 caller", simAPI{noise: 0.02}, 1, 0.025, 0, 0.9},
		{"no limit, 2% random 429s, 3 callers", simAPI{noise: 0.02}, 3, 0.025, 0, 1.1},
		{"100/s, 2% random 429s, 3 callers", simAPI{limit: 100, burst: 100, noise: 0.02}, 3, 0.04, 0, 0.85},
		{"20/s, 2% random 429s, 3 callers", simAPI{limit: 20, burst: 20, noise: 0.02}, 3, 0.08, 0, 0.9},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			seeds := uint64(1)
			if tt.api.noise > 0 {
				seeds = 3
			}
			for seed := range seeds {
				api := tt.api
				api.rng = rand.New(rand.NewPCG(seed, 2))
				res := simulate(t, &api, tt.callers, 25, 50*time.Millisecond, 300*time.Second)
				share := float64(res.refused) / float64(res.calls)
				minAnswers := tt.minAnswers
				if tt.vsFixed > 0 {
					api := tt.api
					api.rng = rand.New(rand.NewPCG(seed, 2))
					f := 100 / float64(tt.callers)
					fixed := simulateWith(t, &api, tt.callers, 25, 50*time.Millisecond, 300*time.Second,
						Config{Initial: f, Floor: f, Ceiling: f})
					minAnswers = tt.vsFixed * fixed.goodput
					t.Logf("draw %d: at a fixed 100/s, %.1f answered/s", seed, fixed.goodput)
				}
				t.Logf("draw %d: calls %d, 429s %.2f%%, answered %.1f/s over the second half", seed, res.calls, 100*share, res.goodput)
				if share > tt.maxRefused {
					t.Errorf("draw %d: 429s are %.2f%% of calls, want at most %.1f%%", seed, 100*share, 100*tt.maxRefused)
				}
				if res.goodput < minAnswers {
					t.Errorf("draw %d: %.1f calls answered per second, want at least %.1f", seed, res.goodput, minAnswers)
				}
			}
		})
	}
}
