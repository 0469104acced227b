package relay

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestSweeperService(t *testing.T) {
	t.Parallel()
	r, pool := newServiceRelay(t)
	insertIntents(t, pool, 2)
	// Claimed and never renewed: the lease (1 s) expires.
	if jobs, err := r.claimer.claim(t.Context(), 2); err != nil || len(jobs) != 2 {
		t.Fatalf("claim: %v, %d jobs", err, len(jobs))
	}
	startService(t, r.sweeper)
	if err := r.sweeper.Start(t.Context()); err == nil {
		t.Fatal("second Start succeeded")
	}
	// The metric is counted once the statement has returned: after the
	// rows changed.
	waitFor(t, 15*time.Second, "the expired leases taken back and counted", func() bool {
		return testutil.ToFloat64(r.metrics.leasesExpired) == 2
	})
	if got := countState(t, pool, "pending"); got != 2 {
		t.Fatalf("%d pending after the sweep, want 2", got)
	}
	stopService(t, r.sweeper)
}
