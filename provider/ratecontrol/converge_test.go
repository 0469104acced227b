package ratecontrol_test

import (
	"errors"
	"fmt"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/outbox-relay/outbox-relay/provider"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
	"github.com/outbox-relay/outbox-relay/provider/ratecontrol"
	"github.com/outbox-relay/outbox-relay/provider/talkjs"
)

// The controller finds a rate it was not told: against a fake API with a
// burst, a sustained rate and a queue (as TalkJS describes its limit),
// driven by more workers than the queue holds, it settles within bounds
// of the hidden rate (at least 85% of it) with under 2% of calls refused
// with 429. A bounded
// request loop; only counts and the controller's rate are asserted.
func TestConvergesToHiddenRate(t *testing.T) {
	if testing.Short() {
		t.Skip("sends a few thousand requests")
	}
	t.Parallel()
	const (
		hidden   = 100.0 // requests per second, unknown to the controller
		requests = 1200
		workers  = 64 // more than the queue: overshooting fills it and meets 429s
	)
	fake := faketalkjs.New(faketalkjs.Config{AppID: "app", SecretKey: "sk_test",
		Faults: faketalkjs.Faults{RateLimit: hidden, Burst: 10, QueueLength: 40}})
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	client, err := talkjs.New(talkjs.Config{AppID: "app", SecretKey: "sk_test", BaseURL: srv.URL, MaxConns: workers})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })

	ctl, err := ratecontrol.New(ratecontrol.Config{Initial: 30, Floor: 5})
	if err != nil {
		t.Fatal(err)
	}
	// The caller's limiter follows the controller's rate.
	lim := rate.NewLimiter(rate.Limit(ctl.Rate()), 1)

	var (
		next     atomic.Int64
		mu       sync.Mutex
		lateSum  float64 // controller rates seen over the second half
		lateN    int
		failures []error
	)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := next.Add(1)
				if i > requests {
					return
				}
				if d := ctl.PausedFor(); d > 0 {
					// A client honouring the API's Retry-After: the pause is
					// the behaviour under test, not a wait for a condition.
					time.Sleep(d)
				}
				if err := lim.Wait(t.Context()); err != nil {
					return
				}
				start := time.Now()
				err := client.PutUser(t.Context(), provider.User{ID: fmt.Sprintf("u%d", i%50), Name: "User"})
				var pe *provider.Error
				switch {
				case err == nil:
					ctl.Answered(time.Since(start))
				case errors.As(err, &pe) && pe.Status == 429:
					ctl.RateLimited(pe.RetryAfter)
				default:
					mu.Lock()
					failures = append(failures, err)
					mu.Unlock()
					ctl.Answered(time.Since(start))
				}
				r := ctl.Rate()
				lim.SetLimit(rate.Limit(r))
				if i > requests/2 {
					mu.Lock()
					lateSum += r
					lateN++
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()

	if len(failures) > 0 {
		t.Fatalf("%d calls failed other than with 429, first: %v", len(failures), failures[0])
	}
	st := fake.Stats()
	refused := st.Faults[faketalkjs.FaultRateLimit]
	share := float64(refused) / float64(st.Requests)
	mean := lateSum / float64(lateN)
	t.Logf("requests %d, 429s %d (%.2f%%), queued %d, mean rate over the second half %.0f/s (hidden %.0f/s)",
		st.Requests, refused, 100*share, st.Faults[faketalkjs.FaultRateQueued], mean, hidden)
	if share >= 0.02 {
		t.Errorf("429 share %.2f%%, want under 2%%", 100*share)
	}
	if mean < 0.85*hidden || mean > 1.3*hidden {
		t.Errorf("mean rate over the second half %.0f/s, want within [%.0f, %.0f] of a hidden %.0f/s", mean, 0.85*hidden, 1.3*hidden, hidden)
	}
}
