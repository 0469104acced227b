package relay

import (
	"testing"
	"time"
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
