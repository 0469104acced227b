package relay

import (
	"sync"
	"testing"
	"time"
)

// fakeLimited is a provider that reports answers and has a limiter: it
// records the limiter's last setting.
type fakeLimited struct {
	mu   sync.Mutex
	rate float64
}

func (f *fakeLimited) OnAnswer(func(status int, latency, retryAfter time.Duration)) {}

func (f *fakeLimited) SetRateLimit(limit float64, burst int) {
	f.mu.Lock()
	f.rate = limit
	f.mu.Unlock()
}

func (f *fakeLimited) limit() float64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rate
}

func newTestAdaptiveRate(t *testing.T, cfg Config) (*adaptiveRate, *fakeLimited) {
	t.Helper()
	cfg.RateAdaptive = true
	if cfg.RateStart == 0 {
		cfg.RateStart = DefaultRateStart
	}
	p := &fakeLimited{}
	a, err := newAdaptiveRate(cfg, p, newMetrics(nil))
	if err != nil || a == nil {
		t.Fatalf("newAdaptiveRate: %v, %v", a, err)
	}
	return a, p
}

// An apply that read the rate before another answer's 429 cut it must
// not overwrite the cut: the rate is read under the lock, so whichever
// apply sets the limiter last read the latest rate. The cut (and its own
// apply) is injected where an apply waits for the lock.
func TestUnitAdaptiveRateApplyKeepsCut(t *testing.T) {
	a, p := newTestAdaptiveRate(t, Config{RateStart: 40})
	before := a.ctl.Rate()
	a.beforeApplyLock = func() {
		a.beforeApplyLock = nil
		a.ctl.RateLimited(time.Second)
		a.apply()
	}
	a.apply()
	cut := a.ctl.Rate()
	if cut >= before {
		t.Fatalf("the 429 did not cut the rate: %.2f before, %.2f after", before, cut)
	}
	if got := p.limit(); got != cut {
		t.Fatalf("limiter at %.2f/s after the cut to %.2f/s (%.2f/s before it): a stale rate overwrote the cut", got, cut, before)
	}
}
