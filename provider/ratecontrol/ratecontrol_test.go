package ratecontrol

import (
	"math"
	"strings"
	"testing"
	"time"
)

// clock is a stubbed clock.
type clock struct{ now time.Time }

func (c *clock) Now() time.Time          { return c.now }
func (c *clock) Advance(d time.Duration) { c.now = c.now.Add(d) }

func newController(t *testing.T, cfg Config) (*Controller, *clock) {
	t.Helper()
	clk := &clock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	cfg.Clock = clk.Now
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c, clk
}

// answer feeds n answers of the given latency, one every 1/rate seconds.
func answer(c *Controller, clk *clock, n int, latency time.Duration) {
	for range n {
		clk.Advance(time.Duration(float64(time.Second) / c.Rate()))
		c.Answered(latency)
	}
}

func near(got, want float64) bool { return math.Abs(got-want) < 1e-6*max(1, want) }

// answerFor feeds answers of the given latency at the current rate for d.
func answerFor(c *Controller, clk *clock, d, latency time.Duration) {
	end := clk.now.Add(d)
	for clk.now.Before(end) {
		answer(c, clk, 1, latency)
	}
}

// cutAt brings c to a steady rate r (the meter full of answers at r) and
// cuts it with a 429 without Retry-After.
func cutAt(c *Controller, clk *clock, r float64) {
	c.SetCeiling(r)
	answerFor(c, clk, 8*time.Second, 10*time.Millisecond)
	c.SetCeiling(0)
	c.RateLimited(0)
}

func TestController(t *testing.T) {
	t.Parallel()
	ms := time.Millisecond
	tests := []struct {
		name      string
		cfg       Config
		run       func(c *Controller, clk *clock)
		wantMin   float64 // bounds of the rate after run
		wantMax   float64
		wantPause time.Duration
	}{
		{
			name:    "defaults start at 10 × the floor",
			cfg:     Config{},
			run:     func(*Controller, *clock) {},
			wantMin: 10, wantMax: 10,
		},
		{
			name:    "starts at the ceiling when there is one",
			cfg:     Config{Ceiling: 40},
			run:     func(*Controller, *clock) {},
			wantMin: 40, wantMax: 40,
		},
		{
			name:    "slow start: the rate doubles every SlowStart while used in full",
			cfg:     Config{Initial: 10, SlowStart: time.Second},
			run:     func(c *Controller, clk *clock) { answerFor(c, clk, 2*time.Second, 10*ms) },
			wantMin: 36, wantMax: 44, // 10 × 2² (the first answer starts the clock)
		},
		{
			name: "the rate rises to at most twice the rate of calls made",
			cfg:  Config{Initial: 10, SlowStart: 100 * ms},
			run: func(c *Controller, clk *clock) {
				for range 100 { // 10 answers a second, for 10 s
					clk.Advance(100 * ms)
					c.Answered(10 * ms)
				}
			},
			wantMin: 19, wantMax: 25, // 2 × 10, and the slack of a meter of 100ms slots
		},
		{
			name:    "increase stops at the ceiling",
			cfg:     Config{Initial: 10, Ceiling: 12},
			run:     func(c *Controller, clk *clock) { answer(c, clk, 100, 10*ms) },
			wantMin: 12, wantMax: 12,
		},
		{
			name: "a 429 cuts to Backoff × the rate measured, and pauses for its Retry-After",
			cfg:  Config{Initial: 150, Ceiling: 150},
			run: func(c *Controller, clk *clock) {
				for range 300 { // 100 answers a second: what the API lets through
					clk.Advance(10 * ms)
					c.Answered(10 * ms)
				}
				c.RateLimited(3 * time.Second)
				clk.Advance(time.Second)
			},
			wantMin: 89, wantMax: 91, wantPause: 2 * time.Second,
		},
		{
			name: "one cut at most halves the rate",
			cfg:  Config{Initial: 100, Ceiling: 100},
			run: func(c *Controller, clk *clock) {
				for range 30 { // 10 answers a second
					clk.Advance(100 * ms)
					c.Answered(10 * ms)
				}
				c.RateLimited(0)
			},
			wantMin: 50, wantMax: 50,
		},
		{
			name:    "a 429 with too few answers measured cuts the rate itself",
			cfg:     Config{Initial: 100},
			run:     func(c *Controller, _ *clock) { c.RateLimited(0) },
			wantMin: 90, wantMax: 90,
		},
		{
			name: "429s within the cooldown cut once; a later Retry-After extends the pause",
			cfg:  Config{Initial: 100},
			run: func(c *Controller, clk *clock) {
				c.RateLimited(time.Second)
				for range 20 {
					clk.Advance(10 * ms)
					c.RateLimited(time.Second)
				}
			},
			wantMin: 90, wantMax: 90, wantPause: time.Second,
		},
		{
			name: "no increase while cooling down or paused",
			cfg:  Config{Initial: 100, Cooldown: 200 * ms},
			run: func(c *Controller, clk *clock) {
				c.RateLimited(time.Second)
				for range 19 {
					clk.Advance(50 * ms)
					c.Answered(10 * ms)
				}
			},
			wantMin: 90, wantMax: 90, wantPause: 50 * ms,
		},
		{
			name: "429s after each cooldown cut again, down to the floor",
			cfg:  Config{Initial: 100, Floor: 20},
			run: func(c *Controller, clk *clock) {
				for range 30 {
					c.RateLimited(0)
					clk.Advance(DefaultCooldown)
				}
			},
			wantMin: 20, wantMax: 20,
		},
		{
			name: "after a cut the rate is back at the cut's measure after Recover",
			cfg:  Config{Initial: 10, Recover: 4 * time.Second},
			run: func(c *Controller, clk *clock) {
				cutAt(c, clk, 100)
				answerFor(c, clk, 4*time.Second, 10*ms)
			},
			wantMin: 99, wantMax: 100.5,
		},
		{
			name: "halfway back: most of the way (concave)",
			cfg:  Config{Initial: 10, Recover: 4 * time.Second},
			run: func(c *Controller, clk *clock) {
				cutAt(c, clk, 100)
				answerFor(c, clk, 2*time.Second, 10*ms)
			},
			wantMin: 98.5, wantMax: 99, // 100 × (1 - 0.1 × (1/2)³)
		},
		{
			name: "then it holds there for Hold",
			cfg:  Config{Initial: 10, Recover: 4 * time.Second, Hold: 10 * time.Second},
			run: func(c *Controller, clk *clock) {
				cutAt(c, clk, 100)
				answerFor(c, clk, 14*time.Second, 10*ms)
			},
			wantMin: 99.9, wantMax: 100.1,
		},
		{
			name: "then it probes above in a straight line",
			cfg:  Config{Initial: 10, Recover: 4 * time.Second, Hold: 10 * time.Second},
			run: func(c *Controller, clk *clock) {
				cutAt(c, clk, 100)
				answerFor(c, clk, 22*time.Second, 10*ms)
			},
			wantMin: 119, wantMax: 121, // 100 × (1 + 0.1 × 2)
		},
		{
			name: "and faster the longer no signal comes",
			cfg:  Config{Initial: 10, Recover: 4 * time.Second, Hold: 10 * time.Second},
			run: func(c *Controller, clk *clock) {
				cutAt(c, clk, 100)
				answerFor(c, clk, 30*time.Second, 10*ms)
			},
			wantMin: 150, wantMax: 221, // above the line (140), at most 100 × (1 + 0.1 × (4 + 2³))
		},
		{
			name: "answers slowing down cut the rate, once per cooldown while they get slower",
			cfg:  Config{Initial: 100, Ceiling: 100},
			run: func(c *Controller, clk *clock) {
				answer(c, clk, 300, 10*ms) // baseline 10ms, 100/s measured
				for i := range 200 {       // a queue growing: cut once slow for slowPersist, and once more a second later
					answer(c, clk, 1, time.Duration(300+3*i)*ms)
				}
			},
			wantMin: 100 * 0.9 * 0.9 * 0.97, wantMax: 100 * 0.9 * 0.9 * 1.03,
		},
		{
			name: "answers slow but getting faster (a queue draining) are not cut again",
			cfg:  Config{Initial: 100, Ceiling: 100},
			run: func(c *Controller, clk *clock) {
				answer(c, clk, 300, 10*ms)
				answer(c, clk, 10, 400*ms) // cut once
				for i := range 150 {
					answer(c, clk, 1, time.Duration(390-2*i)*ms)
				}
			},
			wantMin: 89, wantMax: 100, // cut once to 90, then climbing back
		},
		{
			name: "a stall shorter than slowPersist is not slow",
			cfg:  Config{Initial: 100, Ceiling: 100},
			run: func(c *Controller, clk *clock) {
				answer(c, clk, 300, 10*ms)
				answer(c, clk, 30, time.Second) // 0.3s of slow answers: the caller's machine stalled
				answer(c, clk, 100, 10*ms)
			},
			wantMin: 100, wantMax: 100,
		},
		{
			name: "jitter within the margin is not slow",
			cfg:  Config{Initial: 100, Ceiling: 110, SlowStart: 100 * ms},
			run: func(c *Controller, clk *clock) {
				answer(c, clk, 50, ms)
				answer(c, clk, 50, 40*ms) // 40× the baseline, but only 39ms above it
			},
			wantMin: 110, wantMax: 110,
		},
		{
			name: "a lasting change of latency is learnt: the rate rises again",
			cfg:  Config{Initial: 100, Ceiling: 1000, Floor: 10},
			run: func(c *Controller, clk *clock) {
				answer(c, clk, 50, 10*ms)
				answer(c, clk, 2000, 400*ms)
				before := c.Rate()
				answerFor(c, clk, 40*time.Second, 400*ms)
				if c.Rate() <= before {
					panic("the rate did not rise once 400ms was the usual latency")
				}
			},
			wantMin: 10, wantMax: 1e9,
		},
		{
			name: "SetCeiling brings the rate under it at once, and lifts no rate",
			cfg:  Config{Initial: 100},
			run: func(c *Controller, _ *clock) {
				c.SetCeiling(30)
				if c.Rate() != 30 {
					panic("rate not brought under the new ceiling")
				}
				c.SetCeiling(0)
			},
			wantMin: 30, wantMax: 30,
		},
		{
			name:    "Scale multiplies the rate",
			cfg:     Config{Initial: 90},
			run:     func(c *Controller, _ *clock) { c.Scale(2.0 / 3) },
			wantMin: 60, wantMax: 60,
		},
		{
			name: "Join starts from a rate found by others, and holds near it before probing",
			cfg:  Config{Initial: 10, Recover: 4 * time.Second},
			run: func(c *Controller, clk *clock) {
				c.Join(50)
				answerFor(c, clk, 2*time.Second, 10*ms)
			},
			wantMin: 50, wantMax: 50,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, clk := newController(t, tt.cfg)
			tt.run(c, clk)
			if got := c.Rate(); got < tt.wantMin-1e-9 || got > tt.wantMax+1e-9 {
				t.Fatalf("rate %g, want in [%g, %g]", got, tt.wantMin, tt.wantMax)
			}
			if got := c.PausedFor(); got != tt.wantPause {
				t.Fatalf("paused for %s, want %s", got, tt.wantPause)
			}
		})
	}
}

// Every cut is reported with its cause.
func TestOnCut(t *testing.T) {
	t.Parallel()
	var causes []string
	c, clk := newController(t, Config{Initial: 100, OnCut: func(cause string) { causes = append(causes, cause) }})
	c.RateLimited(0)
	c.RateLimited(0) // cooling down: no cut
	clk.Advance(2 * time.Second)
	answer(c, clk, 50, 10*time.Millisecond)
	answer(c, clk, 100, time.Second)
	if len(causes) != 2 || causes[0] != CauseRateLimited || causes[1] != CauseSlow {
		t.Fatalf("causes %q, want [429 slow]", causes)
	}
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		cfg  Config
		name string
	}{
		{Config{Floor: -1}, "Floor"},
		{Config{Floor: math.NaN()}, "Floor"},
		{Config{Ceiling: math.Inf(1)}, "Ceiling"},
		{Config{Floor: 5, Ceiling: 2}, "Floor"},
		{Config{Ceiling: 0.5}, "Floor"}, // under the default floor
		{Config{Initial: -3}, "Initial"},
		{Config{SlowStart: -1}, "SlowStart"},
		{Config{Recover: -1}, "Recover"},
		{Config{Backoff: 1}, "Backoff"},
		{Config{SlowBackoff: 1.5}, "SlowBackoff"},
		{Config{SlowFactor: 0.9}, "SlowFactor"},
		{Config{SlowMargin: -time.Second}, "SlowMargin"},
		{Config{Cooldown: -time.Second}, "Cooldown"},
	} {
		_, err := New(tt.cfg)
		if err == nil || !strings.Contains(err.Error(), tt.name) {
			t.Errorf("New(%+v) = %v, want an error naming %s", tt.cfg, err, tt.name)
		}
	}
	if c, err := New(Config{Initial: 1000, Ceiling: 50}); err != nil || !near(c.Rate(), 50) {
		t.Fatalf("Initial over the ceiling: %v, rate %g; want 50", err, c.Rate())
	}
}

// callEveryFiftiethRefused makes calls at c's rate for d, refusing every
// 50th with a 429 (2% of calls, whatever the rate), and returns how many.
func callEveryFiftiethRefused(c *Controller, clk *clock, d time.Duration) int {
	calls := 0
	for end := clk.now.Add(d); clk.now.Before(end); {
		clk.Advance(time.Duration(float64(time.Second) / c.Rate()))
		if calls++; calls%50 == 0 {
			c.RateLimited(0)
		} else {
			c.Answered(10 * time.Millisecond)
		}
	}
	return calls
}

// 429s that come at a steady share of calls whatever the rate do not hold
// the rate down: once their share is learnt, they no longer cut it, and
// it climbs on as if they were answers.
func TestRandom429sDoNotHoldTheRateDown(t *testing.T) {
	t.Parallel()
	cuts := 0
	c, clk := newController(t, Config{Initial: 10, OnCut: func(string) { cuts++ }})
	calls := callEveryFiftiethRefused(c, clk, 3*time.Minute)
	t.Logf("%d calls, %d cuts, rate %.1f, share learnt %.3f", calls, cuts, c.Rate(), c.Background())
	if r := c.Rate(); r < 200 {
		t.Errorf("rate %.1f after three minutes of 2%% random 429s, want at least 200", r)
	}
	if share := c.Background(); math.Abs(share-0.02) > 0.005 {
		t.Errorf("learnt share %.3f, want 0.02", share)
	}
}

// With a share of random 429s learnt, 429s coming faster than it still
// cut: a run of them among the last calls is more than the share
// explains.
func TestA429BeyondTheLearntShareCuts(t *testing.T) {
	t.Parallel()
	cuts := 0
	c, clk := newController(t, Config{Initial: 10, Ceiling: 100, OnCut: func(string) { cuts++ }})
	callEveryFiftiethRefused(c, clk, 3*time.Minute)
	learnt, before := cuts, c.Rate()
	if share := c.Background(); math.Abs(share-0.02) > 0.005 {
		t.Fatalf("learnt share %.3f, want 0.02", share)
	}
	for range 15 { // 15 of the last 200 calls: a share of 2% explains about 4 + 4·2
		clk.Advance(10 * time.Millisecond)
		c.RateLimited(0)
	}
	if cuts == learnt || c.Rate() >= before {
		t.Errorf("a run of 15 429s did not cut: %d cuts before, %d after, rate %.1f → %.1f", learnt, cuts, before, c.Rate())
	}
}

// A cut on a second 429 measures the rate the API let through between the
// two (a token bucket, empty at both), not the rate over the meter's
// window, which still counts calls made before the first 429 at a rate
// the API had only let through from its burst.
func TestCutMeasuresTheRateBetweenTwo429s(t *testing.T) {
	t.Parallel()
	c, clk := newController(t, Config{Initial: 200, Ceiling: 200})
	for range 750 { // 150 answers a second for 5 s
		clk.Advance(time.Second / 150)
		c.Answered(10 * time.Millisecond)
	}
	c.RateLimited(0) // the first cut: 0.9 × the window's 150
	if r := c.Rate(); r < 134 || r > 136 {
		t.Fatalf("first cut to %.1f, want 0.9 × 150", r)
	}
	for range 200 { // then 100 answers a second for 2 s: what the API lets through
		clk.Advance(10 * time.Millisecond)
		c.Answered(10 * time.Millisecond)
	}
	c.RateLimited(0)
	// Over the window: (3 s × 150 + 2 s × 100) / 5 s = 130, a cut to 117.
	if r := c.Rate(); r < 89 || r > 91 {
		t.Errorf("second cut to %.1f, want 0.9 × the 100/s let through between the 429s", r)
	}
}
