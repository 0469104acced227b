package relay

import (
	"math"
	"net/http"
	"sync"
	"time"

	"github.com/outbox-relay/outbox-relay/provider/ratecontrol"
)

// relaysPayload is the payload of the notification a relay sends when it
// joins or leaves: the others share the rate limit again at once instead
// of at their next heartbeat. It wakes no claimer.
const relaysPayload = "relays"

// rateBurstWindow sizes an adaptive limit's burst when RateBurst is not
// set: one second of the current rate. A 429's Retry-After (a second,
// from TalkJS and the fake: whole seconds, rounded up) holds every call;
// the client's limiter keeps filling meanwhile, up to this burst, so when
// the hold ends the calls the hold kept back go at once, into an API
// bucket that refilled as long. A hold of a second then costs no
// throughput.
const rateBurstWindow = time.Second

// answerReporter is implemented by providers that report every request's
// answer (provider/talkjs.Client).
type answerReporter interface {
	OnAnswer(func(status int, latency, retryAfter time.Duration))
}

// retryAfterHolder is implemented by providers that can hold all their
// requests for a 429's Retry-After, including those already past the
// relay's own hold and waiting for a slot (provider/talkjs.Client).
type retryAfterHolder interface {
	HoldRetryAfter(longest time.Duration)
}

// rateLimiter is implemented by providers whose request rate can be changed
// at run time (provider/talkjs.Client).
type rateLimiter interface {
	SetRateLimit(limit float64, burst int)
}

// rateReader is implemented by providers that report their current rate
// limit (provider/talkjs.Client): claims are sized to it (rateRoom).
type rateReader interface {
	RateLimit() float64
}

// adaptiveRate is this relay's adaptive limit: a controller fed every
// answer the provider reports, whose rate the provider's limiter follows.
// The ceiling is the relay's share of RateLimit; the relays share what
// they find through outbox.relays (beat).
type adaptiveRate struct {
	ctl     *ratecontrol.Controller
	limiter rateLimiter
	burst   int // the app's RateBurst, 0 for one second of the rate
	m       *metrics

	mu      sync.Mutex
	live    int // live relays at the last heartbeat; 0 before the first
	applied float64
	bursted int

	// beforeApplyLock, when set (tests only), runs in apply before it
	// takes mu: where another answer may cut the rate meanwhile.
	beforeApplyLock func()
}

// newAdaptiveRate returns the adaptive limit of a relay with cfg over p,
// or nil when the relay has none (not RateAdaptive, or a provider that
// reports no answers or has no limiter).
func newAdaptiveRate(cfg Config, p any, m *metrics) (*adaptiveRate, error) {
	if !cfg.RateAdaptive {
		return nil, nil
	}
	rep, ok1 := p.(answerReporter)
	lim, ok2 := p.(rateLimiter)
	if !ok1 || !ok2 {
		return nil, nil
	}
	a := &adaptiveRate{limiter: lim, burst: cfg.RateBurst, m: m}
	start := cfg.RateStart
	if cfg.RateLimit > 0 {
		start = cfg.RateLimit
	}
	ctl, err := ratecontrol.New(ratecontrol.Config{
		Initial: start,
		// Under a configured limit the floor must fit in the smallest
		// share; a relay never goes slower than one call a second.
		Floor: min(ratecontrol.DefaultFloor, start),
		OnCut: func(cause string) { m.rateCuts.WithLabelValues(cause).Inc() },
	})
	if err != nil {
		return nil, err
	}
	a.ctl = ctl
	a.limit(cfg.RateLimit, 1)
	rep.OnAnswer(a.answered)
	if h, ok := p.(retryAfterHolder); ok {
		// The gate holds calls not yet sent for a 429's Retry-After; calls
		// already waiting for a slot of the client's limiter are held by
		// the client. A hold ends with the limiter full of the slots it
		// kept back (see rateBurstWindow).
		h.HoldRetryAfter(maxRetryAfter)
	}
	return a, nil
}

// answered feeds one answer to the controller and applies its rate.
func (a *adaptiveRate) answered(status int, latency, retryAfter time.Duration) {
	if status == http.StatusTooManyRequests {
		a.ctl.RateLimited(retryAfter)
	} else {
		// Any other answer, or none within the timeout (status 0): its
		// latency is what counts.
		a.ctl.Answered(latency)
	}
	a.apply()
}

// limit sets the ceiling: the relay's share of the app's limit.
func (a *adaptiveRate) limit(appLimit float64, live int) {
	if appLimit > 0 {
		a.ctl.SetCeiling(appLimit / float64(max(live, 1)))
	} else {
		a.ctl.SetCeiling(0)
	}
	a.m.rateCeiling.Set(a.ctl.Ceiling())
}

// apply sets the provider's limiter to the controller's rate, when it
// moved by more than a little (setting it takes the limiter's lock). The
// rate is read under mu, so the last apply to set the limiter read the
// controller's latest rate: a rate read before a cut (another answer's
// 429) never overwrites the cut.
func (a *adaptiveRate) apply() {
	if a.beforeApplyLock != nil {
		a.beforeApplyLock()
	}
	a.mu.Lock()
	r := a.ctl.Rate()
	burst := a.burst
	if burst > 0 {
		burst = max(1, burst/max(a.live, 1))
	} else {
		burst = max(1, int(math.Ceil(r*rateBurstWindow.Seconds())))
	}
	if math.Abs(r-a.applied) <= 0.002*a.applied && burst == a.bursted {
		a.mu.Unlock()
		return
	}
	a.applied, a.bursted = r, burst
	a.limiter.SetRateLimit(r, burst)
	a.m.rate.Set(r)
	a.mu.Unlock()
}

// beat shares the limit after a heartbeat found live relays (itself
// included) whose others publish rates summing to others. On the first
// heartbeat a relay joining relays that publish rates starts from its
// share of their sum, else from its share of the app's starting rate
// (RateStart, or RateLimit when set: rates of the whole app); when the
// number of live relays changes, each scales its rate, found or still a
// guess, so that the app's total stays what it was. It returns the rate
// to publish: the rate found, 0 while it is still a starting guess (a
// relay that has made no call yet must not hand its guess on).
func (a *adaptiveRate) beat(appLimit float64, live int, others float64) float64 {
	live = max(live, 1)
	a.mu.Lock()
	before := a.live
	a.live = live
	a.mu.Unlock()
	switch f := float64(max(before, 1)) / float64(live); {
	case before == 0 && live > 1 && others > 0:
		a.limit(appLimit, live)
		a.ctl.Join(others / float64(live))
	case f < 1:
		// Scale under the old share of the ceiling, then lower it: the
		// rate is not first cut to the new share and then scaled again.
		a.ctl.Scale(f)
		a.limit(appLimit, live)
	case f > 1:
		a.limit(appLimit, live)
		a.ctl.Scale(f)
	default:
		a.limit(appLimit, live)
	}
	a.apply()
	a.m.rateBackground.Set(a.ctl.Background())
	if !a.ctl.Found() {
		return 0
	}
	return a.ctl.Rate()
}
