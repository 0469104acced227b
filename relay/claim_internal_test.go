package relay

import (
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/provider"
)

func TestClaimerService(t *testing.T) {
	t.Parallel()
	r, pool := newServiceRelay(t)
	insertIntents(t, pool, 5)
	// The claimer starts workers in the pool, whose results the completer
	// writes: started in that order, stopped in reverse.
	svcs := []service{r.completer, r.workers, r.claimer}
	if err := startAll(t.Context(), svcs); err != nil {
		t.Fatal(err)
	}
	if err := r.claimer.Start(t.Context()); err == nil {
		t.Fatal("second Start succeeded")
	}
	waitFor(t, 20*time.Second, "5 intents done", func() bool { return countState(t, pool, "done") == 5 })
	if err := stopAll(t.Context(), svcs); err != nil {
		t.Fatal(err)
	}
	stopService(t, r.claimer)
	// Stopped, it claims nothing.
	insertIntents(t, pool, 1)
	r.signal()
	if got := countState(t, pool, "pending"); got != 1 {
		t.Fatalf("%d pending after the claimer stopped, want 1", got)
	}
}

// fixedRate is a provider that reports a rate limit and delivers nothing.
type fixedRate struct {
	provider.Provider
	limit float64
}

func (f fixedRate) RateLimit() float64 { return f.limit }

func TestUnitFreeSlots(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		limit    float64 // 0: no limit
		lease    time.Duration
		inFlight int
		want     int
	}{
		{"no limit, idle: every slot", 0, 10 * time.Second, 0, 100},
		{"no limit, a quarter free: claim it", 0, 10 * time.Second, 75, 25},
		{"no limit, under a quarter free: wait", 0, 10 * time.Second, 76, 0},
		{"100/s over a 10s lease serves 125 intents: the slots bound", 100, 10 * time.Second, 0, 100},
		{"20/s over a 10s lease serves 25", 20, 10 * time.Second, 0, 25},
		{"20/s, 20 in flight: 5 free, under a quarter of 25: wait", 20, 10 * time.Second, 20, 0},
		{"20/s, 19 in flight: 6 free, a quarter", 20, 10 * time.Second, 19, 6},
		{"1/s over a 1s lease: still one", 1, time.Second, 0, 1},
		{"1/s, one in flight: none", 1, time.Second, 1, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := &Relay{
				cfg:      Config{Lease: tc.lease, BatchSize: 100},
				provider: fixedRate{limit: tc.limit},
				slots:    make(chan struct{}, 100),
			}
			for range tc.inFlight {
				r.slots <- struct{}{}
			}
			if got := r.freeSlots(); got != tc.want {
				t.Errorf("freeSlots = %d, want %d (rateRoom %d)", got, tc.want, r.rateRoom())
			}
		})
	}
}
