package relay_test

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
	"github.com/outbox-relay/outbox-relay/provider/talkjs"
	"github.com/outbox-relay/outbox-relay/relay"
)

// adaptiveConfig is a relay finding its rate by itself, with heartbeats
// every second.
func adaptiveConfig(name string) relay.Config {
	cfg := testConfig(name)
	cfg.RateAdaptive = true
	cfg.Lease = 4 * time.Second
	cfg.Concurrency = 20
	cfg.Registerer = prometheus.NewRegistry()
	return cfg
}

// startAdaptive starts a relay with cfg, with a client whose timeout
// fits its lease.
func (b *bundle) startAdaptive(t *testing.T, cfg relay.Config) *relay.Relay {
	t.Helper()
	c, err := talkjs.New(talkjs.Config{AppID: testAppID, SecretKey: testSecret, BaseURL: b.url,
		Timeout: relay.MaxCallTimeout(cfg.Lease)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	cfg.Logger = slogTo(b)
	r, err := relay.New(b.pool, c, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	return r
}

// rateWindow is what the fake answered between two looks.
type rateWindow struct {
	ok, limited int64
	elapsed     time.Duration
}

func (w rateWindow) rate() float64 { return float64(w.ok) / w.elapsed.Seconds() }
func (w rateWindow) limitedShare() float64 {
	return float64(w.limited) / float64(max(1, w.ok+w.limited))
}

// measure waits until the fake has answered n more requests and returns
// what it answered meanwhile.
func measure(t *testing.T, fake *faketalkjs.Server, n int, timeout time.Duration) rateWindow {
	t.Helper()
	st0, t0 := fake.Stats(), time.Now()
	var st1 faketalkjs.Stats
	waitFor(t, timeout, fmt.Sprintf("%d more requests", n), func() bool {
		st1 = fake.Stats()
		return st1.Requests-st0.Requests >= int64(n)
	})
	limited := st1.Statuses[http.StatusTooManyRequests] - st0.Statuses[http.StatusTooManyRequests]
	return rateWindow{ok: st1.Requests - st0.Requests - limited, limited: limited, elapsed: time.Since(t0)}
}

// The relays find a rate they were not told: against a fake with a
// hidden rate (a burst, then 429 with Retry-After; or a queue first, so
// answers slow down before any 429), once they have found it they use
// most of it, with few calls refused. The hidden rates are low enough for
// a loaded machine to keep up with; the bounds are looser than the
// benchmark's targets (docs/benchmarks.md), and the rate they found,
// summed over the relays, must lie around the hidden rate.
func TestAdaptiveRateFindsHiddenRate(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for about half a minute")
	}
	t.Parallel()
	for _, tc := range []struct {
		name   string
		relays int
		faults faketalkjs.Faults
	}{
		{"one relay, 429s", 1, faketalkjs.Faults{RateLimit: 60, Burst: 60}},
		{"three relays, 429s", 3, faketalkjs.Faults{RateLimit: 90, Burst: 90}},
		{"three relays, a queue before 429s", 3, faketalkjs.Faults{RateLimit: 90, Burst: 10, QueueLength: 30}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			hidden := tc.faults.RateLimit
			b := setup(t, tc.faults)
			var regs []*prometheus.Registry
			for i := range tc.relays {
				cfg := adaptiveConfig(fmt.Sprintf("adaptive-%d", i))
				regs = append(regs, cfg.Registerer.(*prometheus.Registry))
				b.startAdaptive(t, cfg)
			}
			// More work than the test lasts: a few thousand calls.
			var intents []outbox.Intent
			for i := range 1500 {
				intents = append(intents, orderIntent(fmt.Sprintf("rate-%d", i), i))
			}
			b.insertSQL(t, intents)

			// Finding the rate: the relays start at 20 requests/s each and
			// double until the API objects.
			waitFor(t, 60*time.Second, "the relays to meet the hidden rate", func() bool {
				cuts := 0.0
				for _, reg := range regs {
					cuts += relaytest.MetricValue(t, reg, "outbox_relay_rate_limit_cuts_total", "cause", "429") +
						relaytest.MetricValue(t, reg, "outbox_relay_rate_limit_cuts_total", "cause", "slow")
				}
				return cuts > 0
			})
			measure(t, b.fake, int(5*hidden), 60*time.Second) // settling
			w := measure(t, b.fake, int(15*hidden), 90*time.Second)
			found := 0.0
			for _, reg := range regs {
				found += relaytest.MetricValue(t, reg, "outbox_relay_rate_limit")
			}
			t.Logf("hidden %.0f/s: answered %.1f/s (%.0f%%) over %s, 429s %d (%.2f%% of calls), rates found sum to %.1f/s",
				hidden, w.rate(), 100*w.rate()/hidden, w.elapsed.Round(time.Millisecond), w.limited, 100*w.limitedShare(), found)
			if w.rate() < 0.85*hidden {
				t.Errorf("answered %.1f requests/s, want at least 85%% of the hidden %.0f/s", w.rate(), hidden)
			}
			if w.limitedShare() > 0.02 {
				t.Errorf("429s are %.2f%% of calls, want at most 2%%", 100*w.limitedShare())
			}
			if found < 0.7*hidden || found > 1.5*hidden {
				t.Errorf("the relays' rates sum to %.1f/s, want within [70%%, 150%%] of the hidden %.0f/s", found, hidden)
			}
		})
	}
}
