// Package ratecontrol finds the request rate an API allows from its
// answers, for an API that publishes no sustained rate (TalkJS limits per
// app and only documents a burst and a queue). A Controller raises the
// rate additively while answers come back normally and cuts it
// multiplicatively on a 429 (pausing for its Retry-After) and on answers
// slowing down well above their usual latency, which is how an API that
// queues requests over its rate shows the limit before it refuses them.
//
// A Controller only computes: it sends nothing and waits for nothing. Its
// owner feeds it what each call met (Answered, RateLimited), reads Rate
// and PausedFor, and applies them to its own limiter. The clock is
// injected, so tests drive it without sleeping.
package ratecontrol

import (
	"cmp"
	"fmt"
	"math"
	"sync"
	"time"
)

// Defaults of Config.
const (
	DefaultFloor       = 1.0
	DefaultIncrease    = 5.0
	DefaultBackoff     = 0.5
	DefaultSlowBackoff = 0.8
	DefaultSlowFactor  = 2.0
	DefaultSlowMargin  = 50 * time.Millisecond
	DefaultCooldown    = time.Second
)

// How the latencies move: the recent latency follows answers quickly
// (recentWeight per answer); the baseline drops quickly to a faster answer
// (baselineDown per answer) and rises toward slower ones by time, not by
// answers, with a time constant of baselineRise. So a queue building up
// shows as recent latency well above the baseline, and is not learnt as
// the usual latency (the cuts drain it within seconds), while a lasting
// change of latency is learnt within seconds to tens of seconds, at any
// call rate.
const (
	recentWeight = 0.25
	baselineDown = 0.5
	baselineRise = 10 * time.Second
)

// Config configures a Controller. Every field has a default.
type Config struct {
	// Initial is the rate to start from, in requests per second. Default
	// Ceiling when set, else 10 × Floor.
	Initial float64
	// Floor is the lowest rate, requests per second, > 0. Default
	// DefaultFloor.
	Floor float64
	// Ceiling is the highest rate, requests per second; 0 for none.
	Ceiling float64
	// Increase is how much the rate rises per second of normal answers at
	// the full rate, in requests per second: each normal answer adds
	// Increase / rate, so a caller using only part of its rate raises it
	// that much slower, and an idle one not at all. Default
	// DefaultIncrease.
	Increase float64
	// Backoff multiplies the rate on a 429, in (0, 1). Default
	// DefaultBackoff.
	Backoff float64
	// SlowBackoff multiplies the rate when answers slow down, in (0, 1).
	// Default DefaultSlowBackoff.
	SlowBackoff float64
	// SlowFactor and SlowMargin say what slow is: the recent latency above
	// SlowFactor × the baseline and more than SlowMargin above it (the
	// margin keeps the jitter of fast answers from counting). Defaults
	// DefaultSlowFactor (> 1) and DefaultSlowMargin.
	SlowFactor float64
	SlowMargin time.Duration
	// Cooldown is how long after a cut further signals to cut are ignored
	// and the rate does not rise: the answers to calls already sent at the
	// old rate say nothing about the new one. Default DefaultCooldown.
	Cooldown time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// validate reports the first invalid field, by name.
func (c Config) validate() error {
	bad := func(v float64) bool { return math.IsNaN(v) || math.IsInf(v, 0) }
	switch {
	case bad(c.Floor) || c.Floor < 0:
		return fmt.Errorf("ratecontrol: Floor must be a finite number > 0 (0 for the default), got %g", c.Floor)
	case bad(c.Ceiling) || c.Ceiling < 0:
		return fmt.Errorf("ratecontrol: Ceiling must be a finite number >= 0, got %g", c.Ceiling)
	case c.Ceiling > 0 && c.Floor > c.Ceiling:
		return fmt.Errorf("ratecontrol: Floor %g is above Ceiling %g", c.Floor, c.Ceiling)
	case bad(c.Initial) || c.Initial < 0:
		return fmt.Errorf("ratecontrol: Initial must be a finite number >= 0, got %g", c.Initial)
	case bad(c.Increase) || c.Increase < 0:
		return fmt.Errorf("ratecontrol: Increase must be a finite number >= 0, got %g", c.Increase)
	case bad(c.Backoff) || c.Backoff < 0 || c.Backoff >= 1:
		return fmt.Errorf("ratecontrol: Backoff must be in (0, 1), got %g", c.Backoff)
	case bad(c.SlowBackoff) || c.SlowBackoff < 0 || c.SlowBackoff >= 1:
		return fmt.Errorf("ratecontrol: SlowBackoff must be in (0, 1), got %g", c.SlowBackoff)
	case bad(c.SlowFactor) || (c.SlowFactor != 0 && c.SlowFactor <= 1):
		return fmt.Errorf("ratecontrol: SlowFactor must be > 1, got %g", c.SlowFactor)
	case c.SlowMargin < 0:
		return fmt.Errorf("ratecontrol: SlowMargin must not be negative, got %s", c.SlowMargin)
	case c.Cooldown < 0:
		return fmt.Errorf("ratecontrol: Cooldown must not be negative, got %s", c.Cooldown)
	}
	return nil
}

// Controller is an adaptive rate limit. Create it with New; it is safe for
// concurrent use.
type Controller struct {
	cfg Config

	mu         sync.Mutex
	rate       float64
	baseline   time.Duration // 0 until the first answer
	recent     time.Duration
	lastCut    time.Time // zero: never cut
	lastAnswer time.Time
	// slowPeak is the highest recent latency of the current run of slow
	// answers, 0 when answers are not slow.
	slowPeak    time.Duration
	pausedUntil time.Time
}

// New validates cfg, fills in its defaults and returns a Controller.
func New(cfg Config) (*Controller, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.Floor = cmp.Or(cfg.Floor, DefaultFloor)
	if cfg.Ceiling > 0 && cfg.Floor > cfg.Ceiling {
		return nil, fmt.Errorf("ratecontrol: Floor %g is above Ceiling %g", cfg.Floor, cfg.Ceiling)
	}
	cfg.Initial = cmp.Or(cfg.Initial, cfg.Ceiling, 10*cfg.Floor)
	cfg.Increase = cmp.Or(cfg.Increase, DefaultIncrease)
	cfg.Backoff = cmp.Or(cfg.Backoff, DefaultBackoff)
	cfg.SlowBackoff = cmp.Or(cfg.SlowBackoff, DefaultSlowBackoff)
	cfg.SlowFactor = cmp.Or(cfg.SlowFactor, DefaultSlowFactor)
	cfg.SlowMargin = cmp.Or(cfg.SlowMargin, DefaultSlowMargin)
	cfg.Cooldown = cmp.Or(cfg.Cooldown, DefaultCooldown)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	c := &Controller{cfg: cfg}
	c.rate = c.bound(cfg.Initial)
	return c, nil
}

// Rate returns the current rate in requests per second, within
// [Floor, Ceiling].
func (c *Controller) Rate() float64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rate
}

// SetCeiling changes the ceiling at run time (0 for none), as a relay's
// share of a configured limit changes with the number of live relays. The
// rate is brought under a lower ceiling at once. A ceiling under Floor is
// raised to Floor.
func (c *Controller) SetCeiling(ceiling float64) {
	if math.IsNaN(ceiling) || math.IsInf(ceiling, 0) || ceiling < 0 {
		ceiling = 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if ceiling > 0 {
		ceiling = max(ceiling, c.cfg.Floor)
	}
	c.cfg.Ceiling = ceiling
	c.rate = c.bound(c.rate)
}

// PausedFor returns how long no call should be sent: what is left of the
// latest Retry-After, 0 when none.
func (c *Controller) PausedFor() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return max(c.pausedUntil.Sub(c.cfg.Now()), 0)
}

// Answered records a call the API answered with anything but 429 (a
// success, or a failure that is the call's own) after latency. A call
// that got no answer within its timeout is fed as answered at the
// timeout: it is the slowest answer there is. A normal answer raises the
// rate; answers slowing down well above the baseline cut it, once per
// Cooldown while they keep getting slower.
func (c *Controller) Answered(latency time.Duration) {
	latency = max(latency, 0)
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.cfg.Now()
	if c.baseline == 0 {
		c.baseline, c.recent, c.lastAnswer = max(latency, 1), latency, now
	}
	since := max(now.Sub(c.lastAnswer), 0)
	c.lastAnswer = now
	c.recent += time.Duration(recentWeight * float64(latency-c.recent))
	slow := float64(c.recent) > c.cfg.SlowFactor*float64(c.baseline) &&
		c.recent-c.baseline > c.cfg.SlowMargin
	if latency < c.baseline {
		c.baseline += time.Duration(baselineDown * float64(latency-c.baseline))
	} else {
		w := min(1, since.Seconds()/baselineRise.Seconds())
		c.baseline += time.Duration(w * float64(latency-c.baseline))
	}
	c.baseline = max(c.baseline, 1)

	switch {
	case slow:
		// Cut only while the queue grows: answers slower than any so far
		// in this run. Once the rate is under the API's, the queue drains
		// and answers get faster, though still slow: cutting then would
		// only cost throughput.
		if c.recent > c.slowPeak {
			c.slowPeak = c.recent
			c.cutLocked(now, c.cfg.SlowBackoff)
		}
	case c.coolingLocked(now):
		c.slowPeak = 0
	default:
		c.slowPeak = 0
		c.rate = c.bound(c.rate + c.cfg.Increase/c.rate)
	}
}

// RateLimited records a 429. retryAfter is the answer's Retry-After (0
// when absent): no call should go before it passes (PausedFor). The rate
// is cut, once per Cooldown however many 429s the calls sent at the old
// rate meet.
func (c *Controller) RateLimited(retryAfter time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.cfg.Now()
	if until := now.Add(retryAfter); retryAfter > 0 && until.After(c.pausedUntil) {
		c.pausedUntil = until
	}
	c.cutLocked(now, c.cfg.Backoff)
}

// cutLocked multiplies the rate by factor unless a cut is cooling down.
func (c *Controller) cutLocked(now time.Time, factor float64) {
	if c.coolingLocked(now) {
		return
	}
	c.rate = c.bound(c.rate * factor)
	c.lastCut = now
}

func (c *Controller) coolingLocked(now time.Time) bool {
	return !c.lastCut.IsZero() && now.Sub(c.lastCut) < c.cfg.Cooldown
}

// bound clamps r into [Floor, Ceiling].
func (c *Controller) bound(r float64) float64 {
	r = max(r, c.cfg.Floor)
	if c.cfg.Ceiling > 0 {
		r = min(r, c.cfg.Ceiling)
	}
	return r
}
