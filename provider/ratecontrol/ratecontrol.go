// Package ratecontrol finds the request rate an API allows from its
// answers, for an API that publishes no sustained rate (TalkJS limits per
// app and only documents a burst and a queue).
//
// A Controller starts by doubling its rate every SlowStart until the API
// first objects: a 429, or answers slowing down well above their usual
// latency (an API that queues requests over its rate shows the limit that
// way before it refuses them). On such a signal it cuts the rate to
// Backoff (or SlowBackoff) × the rate of answers actually measured just
// before, which is what the API let through, not to a fraction of what
// was asked for; one cut per Cooldown, however many signals the calls
// already sent at the old rate meet. It then climbs back as CUBIC does: fast
// while far below the rate that drew the cut, flat near it, and faster
// again the longer it goes above it without a signal. So it spends most
// of its time just under the API's rate, with rare refusals.
//
// 429s that come whatever the rate (an API refusing a share of calls at
// random) are learnt as such, and cut only when they come faster than
// their share (see bgMemory).
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
	DefaultBackoff     = 0.9
	DefaultSlowBackoff = 0.9
	DefaultSlowFactor  = 2.0
	DefaultSlowMargin  = 200 * time.Millisecond
	DefaultCooldown    = time.Second
	DefaultSlowStart   = 250 * time.Millisecond
	DefaultRecover     = 4 * time.Second
	DefaultHold        = 12 * time.Second
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
	slowPersist  = 500 * time.Millisecond
)

// The meter: answers are counted in slots of meterSlot over the last
// meterSlots × meterSlot, the window the rate "measured just before" a cut
// is taken over. It spans a Retry-After of a second and the catch-up after
// it, so a pause does not read as a low rate. A cut needs minMeasured
// answers in the window, and minHistory of answers, to trust the
// measure; else it cuts the rate itself.
const (
	meterSlot   = 100 * time.Millisecond
	meterSlots  = 50
	minMeasured = 10
	// minHistory: answers over a shorter time (just started) do not
	// measure a rate yet: the calls made so far were not yet made at the
	// full rate.
	minHistory = time.Second
)

// Growth is bounded by use: the rate rises to at most usedHeadroom times
// the rate of calls made and, after slow start (whose rate moves too fast
// for a measure over the window to keep up), only while the calls made
// use at least usedFull of it (and
// never falls for want of use), so a relay that has little to send does
// not build a rate it has never tried and then fire it all at once.
const (
	usedHeadroom = 2.0
	usedFull     = 0.8
)

// 429s that do not follow the rate: an API may refuse a share of calls
// whatever the rate (a proxy's own limit, a node shedding load), and each
// such 429 cutting the rate would hold it ever lower. A rate's 429s stop
// once the calls go under it; those do not. So the controller learns
// their share from the calls it makes at a rate the API has let through
// (see settledLocked): the share of 429s over the last bgMemory such
// calls, once there are bgLearnt of them with bgMinRefused 429s. A 429
// then cuts only when the 429s among the last bgRecent calls are more
// than that share explains: more than λ + bgSigmas·√λ, λ being bgRecent ×
// the share (429s that come at the share pass it in 1 to 3 of 10,000
// checks for a share of 2 to 10%, 6 to 11 for 0.5 to 2%). An API whose 429s all follow the rate
// shows a share of 0, and every 429 cuts, as it would without this; one
// that also refuses at random shows its share, and the rate still cuts
// once the 429s come faster than that.
const (
	bgMemory = 1000
	bgLearnt = 150
	// bgMinRefused: fewer 429s among them are no share: a limit shared
	// with other callers draws a few 429s at rates it let through (when
	// another caller goes over it), and tolerating them would delay every
	// cut.
	bgMinRefused = 5
	bgRecent     = 200
	bgSigmas     = 4.0
	// bgMaxShare bounds the share: an API refusing more than that at
	// random is one to slow down for anyway.
	bgMaxShare = 0.1
	// bgSpan: two 429s further apart say nothing of a rate between them.
	bgSpan = time.Minute
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
	// SlowStart is how long the rate takes to double before the first
	// cut, while calls are made at the full rate. Default
	// DefaultSlowStart.
	SlowStart time.Duration
	// Recover is how long after a cut the rate takes to climb back to the
	// rate that drew it; it then stays near it for a while and probes
	// above, faster and faster (CUBIC's K). Default DefaultRecover.
	Recover time.Duration
	// Hold is how long the rate stays at the rate of the last cut, once
	// back there, before probing above. Default DefaultHold.
	Hold time.Duration
	// Backoff is the fraction of the measured rate of answers a 429 cuts
	// to, in (0, 1). Default DefaultBackoff.
	Backoff float64
	// SlowBackoff is the same for answers slowing down, in (0, 1).
	// Default DefaultSlowBackoff.
	SlowBackoff float64
	// SlowFactor and SlowMargin say what slow is: the recent latency above
	// SlowFactor × the baseline and more than SlowMargin above it (the
	// margin keeps the jitter of fast answers from counting). Defaults
	// DefaultSlowFactor (> 1) and DefaultSlowMargin.
	SlowFactor float64
	SlowMargin time.Duration
	// Cooldown is how long after a cut (or until a Retry-After has passed,
	// if later) further signals to cut are ignored and the rate does not
	// rise: the answers to calls already sent at the old rate say nothing
	// about the new one. Default DefaultCooldown.
	Cooldown time.Duration
	// OnCut, when set, is called (under the controller's lock: it must
	// not call back) with "429" or "slow" for every cut.
	OnCut func(cause string)
	// Clock is the clock; default time.Now.
	Clock func() time.Time
}

// Causes of a cut, as passed to Config.OnCut.
const (
	CauseRateLimited = "429"
	CauseSlow        = "slow"
)

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
	case c.SlowStart < 0:
		return fmt.Errorf("ratecontrol: SlowStart must not be negative, got %s", c.SlowStart)
	case c.Recover < 0:
		return fmt.Errorf("ratecontrol: Recover must not be negative, got %s", c.Recover)
	case c.Hold < 0:
		return fmt.Errorf("ratecontrol: Hold must not be negative, got %s", c.Hold)
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

	mu   sync.Mutex
	rate float64
	// slowStart: no cut yet, the rate doubles every SlowStart.
	slowStart bool
	// wMax is the rate the last cut measured (what the API let through);
	// epoch is when the climb back to it began. lastGrow is when the rate
	// last rose.
	wMax     float64
	epoch    time.Time
	lastGrow time.Time
	hold     time.Duration // at wMax before probing: Hold after a 429, else 0

	baseline   time.Duration // 0 until the first answer
	recent     time.Duration
	lastCut    time.Time // zero: never cut
	coolUntil  time.Time // no cut, no rise before
	lastAnswer time.Time
	// slowPeak is the highest recent latency of the current run of slow
	// answers, 0 when answers are not slow; slowSince is when the run
	// began.
	slowPeak    time.Duration
	slowSince   time.Time
	pausedUntil time.Time

	meter meter
	// lastCalls are the outcomes (429 or not) of the last calls, settled
	// those of the last calls made at a rate the API let through (see
	// bgMemory). answers counts the answers, all told; refusals are the
	// 429s over the meter's window, oldest first, and last the latest
	// that set letThrough: the rate of answers between two 429s at least
	// minHistory apart (0 for none over bgSpan). unsettledAt is when the
	// rate was last over letThrough, or when a cut stops keeping calls
	// from counting (see settledLocked).
	lastCalls, settled outcomes
	answers            int64
	refusals           []refusal
	last               refusal
	letThrough         float64
	unsettledAt        time.Time
}

// refusal is a 429, when it came and the count of answers then.
type refusal struct {
	at      time.Time
	answers int64
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
	cfg.SlowStart = cmp.Or(cfg.SlowStart, DefaultSlowStart)
	cfg.Recover = cmp.Or(cfg.Recover, DefaultRecover)
	cfg.Hold = cmp.Or(cfg.Hold, DefaultHold)
	cfg.Backoff = cmp.Or(cfg.Backoff, DefaultBackoff)
	cfg.SlowBackoff = cmp.Or(cfg.SlowBackoff, DefaultSlowBackoff)
	cfg.SlowFactor = cmp.Or(cfg.SlowFactor, DefaultSlowFactor)
	cfg.SlowMargin = cmp.Or(cfg.SlowMargin, DefaultSlowMargin)
	cfg.Cooldown = cmp.Or(cfg.Cooldown, DefaultCooldown)
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	c := &Controller{cfg: cfg, slowStart: true,
		lastCalls: newOutcomes(bgRecent), settled: newOutcomes(bgMemory)}
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

// Found reports whether the rate was found: the API objected at least
// once (or the rate was taken from others with Join). Before, the rate is
// a starting guess, doubling as calls are made.
func (c *Controller) Found() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.slowStart
}

// Background returns the share of calls answered 429 whatever the rate,
// as learnt (see bgMemory): 0 until learnt. 429s cut the rate only when
// they come faster than that.
func (c *Controller) Background() float64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.backgroundLocked()
}

func (c *Controller) backgroundLocked() float64 {
	if c.settled.n < bgLearnt || c.settled.count < bgMinRefused {
		return 0
	}
	return min(c.settled.share(), bgMaxShare)
}

// Ceiling returns the current ceiling, 0 for none.
func (c *Controller) Ceiling() float64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cfg.Ceiling
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

// Scale multiplies the rate, and the rate of the last cut, by f: when
// callers sharing one API come or go, each rescales so that their total
// stays what they had found together.
func (c *Controller) Scale(f float64) {
	if math.IsNaN(f) || math.IsInf(f, 0) || f <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rate = c.bound(c.rate * f)
	c.wMax *= f
}

// Join starts from a rate others found (a share of theirs): as if a 429
// had measured it Recover ago, so the rate holds there for Hold and then
// probes above, instead of doubling from it.
func (c *Controller) Join(rate float64) {
	if math.IsNaN(rate) || math.IsInf(rate, 0) || rate <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.cfg.Clock()
	c.rate = c.bound(rate)
	c.wMax = c.rate
	c.slowStart = false
	c.hold = c.cfg.Hold
	c.epoch = now.Add(-c.cfg.Recover)
	c.lastGrow = now
}

// PausedFor returns how long no call should be sent: what is left of the
// latest Retry-After, 0 when none.
func (c *Controller) PausedFor() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return max(c.pausedUntil.Sub(c.cfg.Clock()), 0)
}

// Answered records a call the API answered with anything but 429 (a
// success, or a failure that is the call's own) after latency. A call
// that got no answer within its timeout is fed as answered at the
// timeout: it is the slowest answer there is. A normal answer lets the
// rate rise; answers slowing down well above the baseline cut it, once per
// Cooldown while they keep getting slower.
func (c *Controller) Answered(latency time.Duration) {
	latency = max(latency, 0)
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.cfg.Clock()
	c.meter.add(now)
	c.answers++
	c.lastCalls.add(false)
	if c.settledLocked(now) {
		c.settled.add(false)
	}
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

	if !slow {
		c.slowSince = time.Time{}
	} else if c.slowSince.IsZero() {
		c.slowSince = now
	}
	switch {
	case slow:
		// Cut only once answers have been slow for slowPersist (a stall
		// of the caller's own machine, a GC pause or a busy network make
		// a few answers slow, a queue keeps them slow), and only while
		// the queue grows: answers slower than any so far in this run.
		// Once the rate is under the API's, the queue drains and answers
		// get faster, though still slow: cutting then would only cost
		// throughput.
		// And only while the calls use the rate: answers slowing down
		// while the rate is not what holds the calls back (the caller's
		// own host is busy) are not this rate's doing.
		used, _ := c.meter.rate(now, 1, c.rate)
		if now.Sub(c.slowSince) >= slowPersist && c.recent > c.slowPeak && used >= usedFull*c.rate {
			c.slowPeak = c.recent
			c.cutLocked(now, c.cfg.SlowBackoff, CauseSlow, 0)
		}
		c.lastGrow = now
	case c.coolingLocked(now):
		c.slowPeak = 0
		c.lastGrow = now
	default:
		c.slowPeak = 0
		c.growLocked(now)
	}
}

// growLocked raises the rate for the time since it last rose: doubling
// every SlowStart before the first cut, else along the cubic curve back to
// (and then above) the rate of the last cut. It rises to at most
// usedHeadroom × the rate of calls actually answered.
func (c *Controller) growLocked(now time.Time) {
	if c.lastGrow.IsZero() {
		c.lastGrow = now
		return
	}
	dt := now.Sub(c.lastGrow)
	if dt <= 0 {
		return
	}
	// A long silence (nothing to send) is not time spent at the rate.
	dt = min(dt, time.Second)
	c.lastGrow = now
	var target float64
	if c.slowStart {
		target = c.rate * math.Exp2(dt.Seconds()/c.cfg.SlowStart.Seconds())
	} else {
		// CUBIC: w(t) = wMax + C (t - K)³, with C chosen so that w(0) is
		// Backoff × wMax: K = Recover.
		k := c.cfg.Recover.Seconds()
		x := (now.Sub(c.epoch).Seconds() - k) / k
		if x > 0 {
			// Hold the rate that drew a 429 for Hold before probing
			// above it: an API's burst hides a rate above its own for a
			// while, so a probe is found out late, and far above. A
			// queue shows a probe at once (answers slow down): no hold
			// after a cut for slow answers.
			x = max(0, x-c.hold.Seconds()/k)
		}
		var up float64
		switch {
		case x <= 0:
			up = x * x * x // back to wMax: fast far below it, flat near it
		case x <= 2:
			// Probe above it in a straight line, (1 - Backoff) × wMax per
			// Recover: found out while little above.
			up = x
		default:
			// No signal for long: the API's rate has risen; faster,
			// though never more than cubic.
			up = x + min((x-2)*(x-2)*(x-2), 27*(x-2))
		}
		target = c.wMax * (1 + (1-c.cfg.Backoff)*up)
	}
	if target <= c.rate {
		return
	}
	used, _ := c.meter.rateOver(now, c.slots(), 1, c.rate)
	if !c.slowStart && used < usedFull*c.rate {
		// The calls do not use the rate: it says nothing about the API,
		// so it does not rise, and the curve waits.
		c.epoch = c.epoch.Add(dt)
		return
	}
	c.rate = c.bound(min(target, max(c.rate, usedHeadroom*used)))
}

// RateLimited records a 429. retryAfter is the answer's Retry-After (0
// when absent): no call should go before it passes (PausedFor). The rate
// is cut, once per Cooldown however many 429s the calls sent at the old
// rate meet, unless the 429s are no more than the share that does not
// follow the rate explains (see bgMemory).
func (c *Controller) RateLimited(retryAfter time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.cfg.Clock()
	c.lastCalls.add(true)
	if c.settledLocked(now) {
		c.settled.add(true)
	}
	if c.beyondBackgroundLocked() {
		c.cutLocked(now, c.cfg.Backoff, CauseRateLimited, retryAfter)
	}
	c.refusedLocked(now)
	if until := now.Add(retryAfter); retryAfter > 0 && until.After(c.pausedUntil) {
		c.pausedUntil = until
	}
}

// cutLocked cuts the rate to factor × the rate of answers measured just
// before (what the API let through; the current rate when too few answers
// were measured), unless a cut is cooling down. A cut never raises the
// rate.
func (c *Controller) cutLocked(now time.Time, factor float64, cause string, retryAfter time.Duration) {
	if c.coolingLocked(now) {
		return
	}
	base := c.rate
	m, ok := c.meter.rateOver(now, c.slots(), minMeasured, c.rate)
	ok = ok && now.Sub(c.meter.first) >= minHistory
	if r, between := c.sinceRefusalLocked(now); between && cause == CauseRateLimited {
		m, ok = r, true
	}
	if ok {
		// At most halved by one cut: when several callers share the
		// API, one may see few of its calls through for a moment.
		base = min(base, max(m, 0.5*c.rate/factor))
	}
	c.wMax = base
	c.rate = c.bound(min(c.rate, factor*base))
	c.slowStart = false
	c.lastCut, c.epoch, c.lastGrow = now, now, now
	// Unsettled until a cooldown after its Retry-After, when the calls
	// it held have gone and been answered.
	c.unsettledAt = now.Add(retryAfter + c.cfg.Cooldown)
	c.hold = 0
	if cause == CauseRateLimited {
		c.hold = c.cfg.Hold
	}
	// Cooling: Cooldown, or until a quarter of it after the Retry-After
	// of this cut has passed, if later (the calls held meanwhile go when
	// it ends, with the slots they had at the old rate, and their answers
	// say nothing of the new rate). Only this cut's Retry-After counts:
	// were every later 429 to extend the cooling, 429s coming on and on
	// would never cut again.
	c.coolUntil = now.Add(max(c.cfg.Cooldown, retryAfter+c.cfg.Cooldown/4))
	if c.cfg.OnCut != nil {
		c.cfg.OnCut(cause)
	}
}

// refusedLocked records a 429 just met (and counted): in refusals, and
// in letThrough.
func (c *Controller) refusedLocked(now time.Time) {
	r := refusal{at: now, answers: c.answers}
	c.trimRefusalsLocked(now)
	c.refusals = append(c.refusals, r)
	if c.last.at.IsZero() || now.Sub(c.last.at) > bgSpan {
		c.letThrough, c.last = 0, r
	} else if rate, ok := c.rateSinceLocked(c.last, now); ok {
		c.letThrough, c.last = rate, r
	}
}

// trimRefusalsLocked drops the 429s older than the meter's window.
func (c *Controller) trimRefusalsLocked(now time.Time) {
	i := 0
	for i < len(c.refusals) && now.Sub(c.refusals[i].at) > meterSlots*meterSlot {
		i++
	}
	c.refusals = append(c.refusals[:0], c.refusals[i:]...)
}

// sinceRefusalLocked returns the rate of answers since the oldest 429
// over the meter's window (see rateSinceLocked). An API that refuses over its rate (a token
// bucket, emptied at both 429s) lets exactly its rate through between
// two 429s, whatever the caller did meanwhile (paused for a Retry-After
// and then caught up, or went on over it), where the rate of answers over
// the window before the first 429 also counts the burst the bucket held.
func (c *Controller) sinceRefusalLocked(now time.Time) (float64, bool) {
	c.trimRefusalsLocked(now)
	if len(c.refusals) == 0 {
		return 0, false
	}
	return c.rateSinceLocked(c.refusals[0], now)
}

// rateSinceLocked returns the rate of answers since the 429 r, when that
// is at least minHistory ago with minMeasured answers since.
func (c *Controller) rateSinceLocked(r refusal, now time.Time) (float64, bool) {
	span, n := now.Sub(r.at), c.answers-r.answers
	if span < minHistory || n < minMeasured {
		return 0, false
	}
	return float64(n) / span.Seconds(), true
}

// settledLocked reports whether the call answered now went at a rate the
// API let through: the rate is at most letThrough, and has been since
// before the call was sent (twice the recent latency ago), and the last
// cut's Retry-After ended at least a Cooldown before that (the calls the
// pause held go at its end at once, and every caller that met the same
// limit releases its own together: their 429s are the limit's). An API
// that refuses over its rate lets at most its rate through between two
// 429s, so the 429s met under it do not follow the rate. Answers and
// 429s are judged alike, by the time they come, so that neither is
// counted more than the other.
func (c *Controller) settledLocked(now time.Time) bool {
	if c.rate > c.letThrough {
		if now.After(c.unsettledAt) {
			c.unsettledAt = now
		}
		return false
	}
	return now.Sub(c.unsettledAt) > 2*c.recent
}

// beyondBackgroundLocked reports whether the 429s among the last calls
// are more than the share that does not follow the rate explains (see
// bgMemory).
func (c *Controller) beyondBackgroundLocked() bool {
	lambda := float64(c.lastCalls.n) * c.backgroundLocked()
	return float64(c.lastCalls.count) > lambda+bgSigmas*math.Sqrt(lambda)
}

// slots is how many slots of the meter measure the rate of answers: in
// slow start the rate doubles every SlowStart, so only the last second
// measures it (the whole window would lag far behind); else the whole
// window.
func (c *Controller) slots() int {
	if c.slowStart {
		return int(time.Second / meterSlot)
	}
	return meterSlots
}

// coolingLocked reports whether a cut is cooling down (see cutLocked).
func (c *Controller) coolingLocked(now time.Time) bool {
	return now.Before(c.coolUntil)
}

// bound clamps r into [Floor, Ceiling].
func (c *Controller) bound(r float64) float64 {
	r = max(r, c.cfg.Floor)
	if c.cfg.Ceiling > 0 {
		r = min(r, c.cfg.Ceiling)
	}
	return r
}

// outcomes are the outcomes (429 or not) of the last len(refused) calls.
type outcomes struct {
	refused []bool // a ring
	n, next int
	count   int // of 429s
}

func newOutcomes(size int) outcomes {
	return outcomes{refused: make([]bool, size)}
}

func (o *outcomes) add(refused bool) {
	if o.n == len(o.refused) {
		if o.refused[o.next] {
			o.count--
		}
	} else {
		o.n++
	}
	o.refused[o.next] = refused
	if refused {
		o.count++
	}
	o.next = (o.next + 1) % len(o.refused)
}

// share returns the share of 429s, 0 when empty.
func (o *outcomes) share() float64 {
	if o.n == 0 {
		return 0
	}
	return float64(o.count) / float64(o.n)
}

// meter counts answers in time slots over a sliding window.
type meter struct {
	slot  [meterSlots]int64 // slot number (time / meterSlot) each count is for
	count [meterSlots]int
	first time.Time // the first answer counted
}

func (m *meter) add(now time.Time) {
	if m.first.IsZero() {
		m.first = now
	}
	n := now.UnixNano() / int64(meterSlot)
	i := n % meterSlots
	if m.slot[i] != n {
		m.slot[i], m.count[i] = n, 0
	}
	m.count[i]++
}

// rate returns the answers per second over the window (or since the
// first answer, if sooner), and whether at least need answers were
// counted. expected is the rate answers are expected at.
func (m *meter) rate(now time.Time, need int, expected float64) (float64, bool) {
	return m.rateOver(now, meterSlots, need, expected)
}

// rateOver is rate over the last slots slots only.
func (m *meter) rateOver(now time.Time, slots, need int, expected float64) (float64, bool) {
	if m.first.IsZero() {
		return 0, false
	}
	n := now.UnixNano() / int64(meterSlot)
	total := 0
	for i := range meterSlots {
		if s := m.slot[i]; s > n-int64(slots) && s <= n {
			total += m.count[i]
		}
	}
	// The window: the slots before this one, and this one so far, or
	// since the first answer plus the interval before it (at the expected
	// rate), when that is shorter.
	window := time.Duration(slots-1)*meterSlot + time.Duration(now.UnixNano()-n*int64(meterSlot))
	span := min(window, now.Sub(m.first)+time.Duration(float64(time.Second)/expected))
	if total < need || span <= 0 {
		return 0, false
	}
	return float64(total) / span.Seconds(), true
}
