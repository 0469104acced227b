package relay

import (
	"context"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
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

// limitedOK is an okProvider with a limiter that reports answers, so a
// relay over it has an adaptive rate.
type limitedOK struct {
	okProvider
	fakeLimited
}

// A relay that crashed (stopped without removing its row) gives its share
// of the rate limit back within a sweep of its heartbeat becoming older
// than the lease: every live relay's sweep counts the live relays and
// shares again when the number changed, not at its next heartbeat. With a
// lease of 30s the heartbeats come every 10s and the sweeps every second;
// the crashed relay's heartbeat is aged right after the others beat, so
// only a sweep can share again within the deadline of two sweeps.
func TestAdaptiveRateCrashedRelaySharedWithinSweep(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewPool(t)
	const appLimit = 30.0
	suffix := randomSuffix()
	var relays []*Relay
	for _, name := range []string{"a", "b", "c"} {
		cfg := Config{Name: "crash-" + name + "-" + suffix, Lease: 30 * time.Second, RateAdaptive: true, RateLimit: appLimit}
		r, err := New(pool, &limitedOK{}, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if r.rate == nil {
			t.Fatal("the relay has no adaptive rate")
		}
		if err := r.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(r.Stop)
		relays = append(relays, r)
	}
	a, b, c := relays[0], relays[1], relays[2]
	shares := func(live int) bool {
		for _, r := range []*Relay{a, b} {
			if r.keeper.live.Load() != int64(live) || r.rate.ctl.Ceiling() != appLimit/float64(live) {
				return false
			}
		}
		return true
	}
	// They share at once: each joining relay notifies.
	relaytest.WaitFor(t, 10*time.Second, "the three relays to share the limit", func() bool { return shares(3) })

	// C crashes: its services stop, its row stays.
	if err := stopAll(context.Background(), c.services()); err != nil {
		t.Fatal(err)
	}
	// Wait for A's and B's next heartbeats, so that the next ones are most
	// of a heartbeat interval away, then age C's heartbeat past the lease.
	var mark time.Time
	if err := pool.QueryRow(t.Context(), `SELECT now()`).Scan(&mark); err != nil {
		t.Fatal(err)
	}
	relaytest.WaitFor(t, 2*a.cfg.heartbeatInterval(), "relays A and B to beat", func() bool {
		var n int
		if err := pool.QueryRow(t.Context(), `SELECT count(*) FROM outbox.relays WHERE id = ANY($1) AND heartbeat_at > $2`,
			[]string{a.cfg.Name, b.cfg.Name}, mark).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 2
	})
	if _, err := pool.Exec(t.Context(), `UPDATE outbox.relays SET heartbeat_at = now() - $2::interval WHERE id = $1`,
		c.cfg.Name, c.cfg.liveWithin()); err != nil {
		t.Fatal(err)
	}
	if !shares(3) {
		t.Fatal("a relay shared the limit again before the crashed relay's heartbeat was older than the lease")
	}
	relaytest.WaitFor(t, 2*a.cfg.sweepInterval(), "relays A and B to take the crashed relay's share within two sweeps",
		func() bool { return shares(2) })
}

// The starting rate is the app's, as OUTBOX_RATE_LIMIT is: relays
// starting together ask for RateStart between them, not each, and a
// starting guess is shared again as relays come and go. Under a ceiling
// (RateLimit) each relay's rate is its share of it, also after a relay
// joins (not cut to the new share and then scaled again).
func TestUnitAdaptiveRateStartSharedByLiveRelays(t *testing.T) {
	for _, tc := range []struct {
		name     string
		cfg      Config
		appLimit float64
	}{
		{"start", Config{RateStart: 30}, 0},
		{"ceiling", Config{RateLimit: 30}, 30},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, p := newTestAdaptiveRate(t, tc.cfg)
			for _, step := range []struct {
				live int
				want float64
			}{{3, 10}, {2, 15}, {3, 10}, {1, 30}} {
				if got := a.beat(tc.appLimit, step.live, 0); got != 0 {
					t.Fatalf("published %.2f/s for a starting guess", got)
				}
				if r, l := a.ctl.Rate(), p.limit(); math.Abs(r-step.want) > 1e-9 || math.Abs(l-step.want) > 1e-9 {
					t.Fatalf("with %d live relays: rate %.3f/s, limiter %.3f/s, want %.3f/s (the app's 30/s shared)",
						step.live, r, l, step.want)
				}
			}
		})
	}
}
