package relay

import (
	"testing"
	"time"
)

func TestLeaseKeeperService(t *testing.T) {
	t.Parallel()
	r, pool := newServiceRelay(t)
	insertIntents(t, pool, 1)
	jobs, err := r.claimer.claim(t.Context(), 1)
	if err != nil || len(jobs) != 1 {
		t.Fatalf("claim: %v, %d jobs", err, len(jobs))
	}
	j := jobs[0]
	r.held.add(j)
	first := j.deadline.Load()
	startService(t, r.keeper)
	// Within a heartbeat interval (Lease/3) it renews the lease and
	// records the relay as live.
	waitFor(t, 10*time.Second, "a renewed lease", func() bool { return j.deadline.Load() > first })
	// The heartbeat follows the renewal in the same round.
	waitFor(t, 10*time.Second, "the relay's row", func() bool {
		var rows int
		if err := pool.QueryRow(t.Context(), `SELECT count(*) FROM outbox.relays WHERE id = $1`, r.cfg.Name).Scan(&rows); err != nil {
			t.Fatal(err)
		}
		return rows == 1
	})
	stopService(t, r.keeper)
	stopped := j.deadline.Load()
	if err := r.keeper.Start(t.Context()); err != nil { // started again once stopped
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a lease renewed after a restart", func() bool { return j.deadline.Load() > stopped })
	stopService(t, r.keeper)
}
