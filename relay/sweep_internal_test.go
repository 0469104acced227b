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
	if jobs, err := r.claim(t.Context(), 2); err != nil || len(jobs) != 2 {
		t.Fatalf("claim: %v, %d jobs", err, len(jobs))
	}
	startService(t, r.sweeper)
	if err := r.sweeper.Start(t.Context()); err == nil {
		t.Fatal("second Start succeeded")
	}
	waitFor(t, 15*time.Second, "the expired leases taken back", func() bool {
		return countState(t, pool, "pending") == 2
	})
	if got := testutil.ToFloat64(r.metrics.leasesExpired); got != 2 {
		t.Fatalf("leases expired = %v, want 2", got)
	}
	stopService(t, r.sweeper)
}
