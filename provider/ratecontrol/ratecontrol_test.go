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
	cfg.Now = clk.Now
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
			name:    "additive increase: Increase per second at the full rate",
			cfg:     Config{Initial: 10, Increase: 5},
			run:     func(c *Controller, clk *clock) { answer(c, clk, 10, 10*ms) }, // about 0.8s at 10 to 14 per second
			wantMin: 14, wantMax: 14.5,
		},
		{
			name:    "increase stops at the ceiling",
			cfg:     Config{Initial: 10, Ceiling: 12, Increase: 50},
			run:     func(c *Controller, clk *clock) { answer(c, clk, 100, 10*ms) },
			wantMin: 12, wantMax: 12,
		},
		{
			name: "a 429 halves the rate and pauses for its Retry-After",
			cfg:  Config{Initial: 100},
			run: func(c *Controller, clk *clock) {
				c.RateLimited(3 * time.Second)
				clk.Advance(time.Second)
			},
			wantMin: 50, wantMax: 50, wantPause: 2 * time.Second,
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
			wantMin: 50, wantMax: 50, wantPause: time.Second,
		},
		{
			name:    "a 429 without Retry-After cuts without a pause",
			cfg:     Config{Initial: 100},
			run:     func(c *Controller, _ *clock) { c.RateLimited(0) },
			wantMin: 50, wantMax: 50,
		},
		{
			name: "no increase while cooling down",
			cfg:  Config{Initial: 100, Increase: 50},
			run: func(c *Controller, clk *clock) {
				c.RateLimited(0)
				for range 10 {
					clk.Advance(50 * ms)
					c.Answered(10 * ms)
				}
			},
			wantMin: 50, wantMax: 50,
		},
		{
			name: "429s after each cooldown cut again, down to the floor",
			cfg:  Config{Initial: 100, Floor: 20},
			run: func(c *Controller, clk *clock) {
				for range 5 {
					c.RateLimited(0)
					clk.Advance(DefaultCooldown)
				}
			},
			wantMin: 20, wantMax: 20,
		},
		{
			name: "answers slowing down cut the rate, once per cooldown while they get slower",
			cfg:  Config{Initial: 100, Increase: 1},
			run: func(c *Controller, clk *clock) {
				answer(c, clk, 50, 10*ms) // baseline 10ms, rate ≈ 100.5
				for i := range 120 {      // a queue growing: cut at once, and once more a second later
					answer(c, clk, 1, time.Duration(100+2*i)*ms)
				}
			},
			wantMin: 100.5 * 0.8 * 0.8 * 0.99, wantMax: 100.5 * 0.8 * 0.8 * 1.01,
		},
		{
			name: "answers slow but getting faster (a queue draining) are not cut again",
			cfg:  Config{Initial: 100, Increase: 1},
			run: func(c *Controller, clk *clock) {
				answer(c, clk, 50, 10*ms)
				answer(c, clk, 10, 400*ms) // cut once
				for i := range 150 {
					answer(c, clk, 1, time.Duration(390-2*i)*ms)
				}
			},
			wantMin: 100.5 * 0.8 * 0.99, wantMax: 100.5 * 0.8 * 1.01,
		},
		{
			name: "jitter within the margin is not slow",
			cfg:  Config{Initial: 100, Increase: 10},
			run: func(c *Controller, clk *clock) {
				answer(c, clk, 50, ms)
				answer(c, clk, 50, 40*ms) // 40× the baseline, but only 39ms above it
			},
			wantMin: 109, wantMax: 111,
		},
		{
			name: "a lasting change of latency is learnt: the rate rises again",
			cfg:  Config{Initial: 100, Increase: 10, Floor: 10},
			run: func(c *Controller, clk *clock) {
				answer(c, clk, 50, 10*ms)
				answer(c, clk, 2000, 200*ms)
				before := c.Rate()
				answer(c, clk, 100, 200*ms)
				if c.Rate() <= before {
					panic("the rate did not rise once 200ms was the usual latency")
				}
			},
			wantMin: 10, wantMax: 1000,
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
		{Config{Increase: -1}, "Increase"},
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
