package relay

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/outbox-relay/outbox-relay/provider"
)

// Pause reasons.
const (
	pauseAuth    = "auth"    // TalkJS refused the credentials
	pauseBreaker = "breaker" // TalkJS keeps failing: circuit open
)

const (
	firstProbeDelay = time.Second
	maxProbeDelay   = 30 * time.Second

	// maxRetryAfter caps a server's Retry-After (a proxy's "a day" would
	// park every worker). A 429 without one waits 1s, doubling per 429 in
	// a row up to maxRateLimitWait.
	maxRetryAfter    = 5 * time.Minute
	maxRateLimitWait = 30 * time.Second
)

// gate is the relay-wide view of the API's health. It pauses claiming when
// the credentials are refused (auth) or too many calls fail in a row
// (circuit breaker); while paused it lets one probe intent through per probe
// interval, growing from 1s to 30s, until a call succeeds. It also holds a
// relay-wide "not before" time set by the API's 429 Retry-After, which
// every call waits for, since a rate limit applies to the whole app (the
// client's own limiter refusing one call does not set it).
type gate struct {
	threshold int
	clock     func() time.Time

	mu          sync.Mutex
	consecutive int    // retryable call failures since the last success
	limited     int    // 429s since the last other answer
	reason      string // "" when open for business
	probeDelay  time.Duration
	nextProbe   time.Time // when paused: the next probe may start
	probing     bool      // a probe intent is in flight
	pauses      uint64    // incremented by every pause: the generation of a call
	notBefore   time.Time // 429: no call before this time
	changed     chan struct{}
	onChange    func(reason string, err error)
}

func newGate(threshold int, clock func() time.Time, onChange func(reason string, err error)) *gate {
	return &gate{threshold: threshold, clock: clock, changed: make(chan struct{}), onChange: onChange}
}

// admit says how many intents may be claimed now: -1 for no limit, 1 for a
// probe, or 0 with how long to wait before asking again.
func (g *gate) admit() (n int, wait time.Duration) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.reason == "" {
		return -1, 0
	}
	if g.probing {
		return 0, g.probeDelay
	}
	now := g.clock()
	if now.Before(g.nextProbe) {
		return 0, g.nextProbe.Sub(now)
	}
	g.probing = true
	return 1, 0
}

// probeDone ends a probe whose intent did not report a call (e.g. it failed
// before calling, or the claim found nothing).
func (g *gate) probeDone() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.probing {
		g.probing = false
		g.scheduleProbeLocked()
	}
}

// send reports whether a call may be sent now (always for a probe's, else
// only while not paused) and the pause generation it is sent in, which
// the call hands back to observe. One look, so a pause that begins between
// the two cannot be missed.
func (g *gate) send(probe bool) (gen uint64, ok bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.pauses, probe || g.reason == ""
}

// observe records the result of one API call (err nil for success) sent in
// generation gen.
func (g *gate) observe(err error, gen uint64) {
	g.mu.Lock()
	changed := g.observeLocked(err, gen)
	reason := g.reason
	g.mu.Unlock()
	// Outside the lock: the callback reads the gate.
	if changed && g.onChange != nil {
		g.onChange(reason, err)
	}
}

// observeLocked updates the state and reports whether the pause reason
// changed. An answer to a call sent before the current pause began (it was
// in flight when the failures piled up) says nothing about the API now, so
// it cannot end the pause; only a probe's can.
func (g *gate) observeLocked(err error, gen uint64) (changed bool) {
	before := g.reason
	stale := g.reason != "" && gen != g.pauses
	st := gateStep(gateState{consecutive: g.consecutive, limited: g.limited, reason: g.reason, probing: g.probing},
		answerOf(err), stale, g.threshold)
	g.consecutive, g.limited = st.next.consecutive, st.next.limited
	if st.hold > 0 {
		if until := g.clock().Add(st.hold); until.After(g.notBefore) {
			g.notBefore = until
		}
	}
	switch {
	case st.setPause:
		g.setLocked(st.next.reason)
	case st.endProbe:
		g.probing = false
		g.scheduleProbeLocked()
	}
	return g.reason != before
}

// answerKind is what one call's answer says about the API, as the gate
// sees it.
type answerKind int

const (
	answerNothing   answerKind = iota // cancelled, not an API answer, or the client's own limiter: nothing about the API
	answerOK                          // success
	answerAuth                        // the credentials were refused
	answerRetryable                   // a failure worth retrying (5xx, no answer)
	answerLimited                     // the API's 429
	answerJudged                      // the API judged the request (permanent): it is up
)

// callAnswer classifies a call's error for the gate.
type callAnswer struct {
	kind       answerKind
	retryAfter time.Duration // answerLimited: the server's Retry-After, 0 when none
}

// answerOf classifies err (nil for success).
func answerOf(err error) callAnswer {
	if err == nil {
		return callAnswer{kind: answerOK}
	}
	var pe *provider.Error
	if !errors.As(err, &pe) {
		return callAnswer{kind: answerNothing}
	}
	switch pe.Kind {
	case provider.Auth:
		return callAnswer{kind: answerAuth}
	case provider.Retryable:
		return callAnswer{kind: answerRetryable}
	case provider.RateLimited:
		if pe.Status == 0 {
			// The client's own limiter refused this one call: nothing
			// was sent, and the other calls keep their slots. That call
			// goes back to pending alone; holding every call would turn
			// a queue into stop-and-go.
			return callAnswer{kind: answerNothing}
		}
		return callAnswer{kind: answerLimited, retryAfter: pe.RetryAfter}
	case provider.Permanent:
		return callAnswer{kind: answerJudged}
	}
	return callAnswer{kind: answerNothing}
}

// gateState is the part of the gate that answers change.
type gateState struct {
	consecutive int    // retryable failures since the last success
	limited     int    // 429s since the last other answer
	reason      string // the pause, "" when open
	probing     bool   // a probe intent is in flight
}

// gateChange is what one answer does to the gate.
type gateChange struct {
	next     gateState
	setPause bool          // set next.reason as the pause (setLocked)
	endProbe bool          // the probe in flight failed: schedule the next one
	hold     time.Duration // a 429: hold every call this long
}

// gateStep is the breaker's transition: the gate's state after answer a.
// stale says the call was sent before the current pause began.
func gateStep(s gateState, a callAnswer, stale bool, threshold int) gateChange {
	c := gateChange{next: s}
	// A pause change ends any probe (setLocked schedules the next).
	pause := func(reason string) { c.setPause, c.next.reason, c.next.probing = true, reason, false }
	probeFailed := s.reason != "" && s.probing && !stale
	switch a.kind {
	case answerOK:
		if stale {
			break
		}
		c.next.consecutive, c.next.limited = 0, 0
		if s.reason != "" {
			pause("")
		}
	case answerAuth:
		if s.reason != pauseAuth {
			pause(pauseAuth)
		} else {
			c.endProbe = probeFailed
		}
	case answerRetryable:
		c.next.consecutive++
		if s.reason == "" && c.next.consecutive >= threshold {
			pause(pauseBreaker)
		} else {
			c.endProbe = probeFailed
		}
	case answerLimited:
		// The API answered: the breaker has nothing to fear. Hold every
		// call until Retry-After has passed (the limit is the app's, not
		// this call's).
		c.next.limited++
		c.hold = rateLimitHold(a.retryAfter, c.next.limited)
	case answerJudged:
		if stale {
			break
		}
		c.next.consecutive, c.next.limited = 0, 0
		if s.reason == pauseBreaker {
			pause("")
		}
	}
	if c.endProbe {
		c.next.probing = false
	}
	return c
}

// rateLimitHold is how long a 429 holds every call: its Retry-After, at
// most maxRetryAfter; without one, 1s doubling per 429 in a row (limited
// counts them, this one included) up to maxRateLimitWait.
func rateLimitHold(retryAfter time.Duration, limited int) time.Duration {
	if wait := min(retryAfter, maxRetryAfter); wait > 0 {
		return wait
	}
	return min(time.Second<<min(max(limited, 1)-1, 10), maxRateLimitWait)
}

// waitCall blocks until a 429's Retry-After has passed. It returns how long
// it held the call (0 when no Retry-After was in force), so that only real
// holds are counted, not a scheduler's delay.
func (g *gate) waitCall(ctx context.Context) (held time.Duration, err error) {
	for {
		g.mu.Lock()
		wait := g.notBefore.Sub(g.clock())
		g.mu.Unlock()
		if wait <= 0 {
			return held, nil
		}
		start := time.Now()
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return held + time.Since(start), ctx.Err()
		case <-t.C:
		}
		held += time.Since(start)
	}
}

// paused returns the pause reason, "" when not paused.
func (g *gate) paused() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.reason
}

// changes returns a channel closed at the next pause state change.
func (g *gate) changes() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.changed
}

func (g *gate) setLocked(reason string) {
	prev := g.reason
	g.reason = reason
	g.probing = false
	if reason == "" {
		g.probeDelay = 0
		g.consecutive = 0
	} else {
		if reason != prev {
			g.pauses++
		}
		if prev == "" {
			g.probeDelay = 0
			g.scheduleProbeLocked()
		}
	}
	close(g.changed)
	g.changed = make(chan struct{})
}

func (g *gate) scheduleProbeLocked() {
	if g.probeDelay == 0 {
		g.probeDelay = firstProbeDelay
	} else {
		g.probeDelay = min(2*g.probeDelay, maxProbeDelay)
	}
	g.nextProbe = g.clock().Add(g.probeDelay)
}
