package relay

import (
	"testing"
	"time"
)

func TestListenerService(t *testing.T) {
	t.Parallel()
	r, pool := newServiceRelay(t)
	l := r.listener
	startService(t, l)
	if err := l.Start(t.Context()); err == nil {
		t.Fatal("second Start succeeded")
	}
	waitFor(t, 10*time.Second, "the LISTEN connection", r.listener.listening.Load)
	// A producer's NOTIFY wakes the claimer; a relay's wakes the lease keeper.
	if _, err := pool.Exec(t.Context(), `SELECT pg_notify('`+notifyChannel+`', '')`); err != nil {
		t.Fatal(err)
	}
	select {
	case <-r.claimer.notifications:
	case <-time.After(10 * time.Second):
		t.Fatal("no wake-up after a NOTIFY")
	}
	if _, err := pool.Exec(t.Context(), relaysChanged); err != nil {
		t.Fatal(err)
	}
	select {
	case <-r.keeper.changed:
	case <-time.After(10 * time.Second):
		t.Fatal("no relays-changed signal after a relay's NOTIFY")
	}
	stopService(t, l)
	if r.listener.listening.Load() {
		t.Fatal("listening after Stop")
	}
}
