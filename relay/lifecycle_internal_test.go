package relay

import (
	"errors"
	"testing"
	"time"
)

// running lists the services of r that run.
func running(r *Relay) []string {
	var names []string
	for _, s := range []*startStop{&r.keeper.startStop, &r.sweeper.startStop, &r.control.startStop,
		&r.gauges.startStop, &r.completer.startStop, &r.listener.startStop, &r.retainer.startStop,
		&r.claimer.startStop} {
		if s.running() {
			names = append(names, s.name)
		}
	}
	if r.workers.workCtx() != nil {
		names = append(names, "workers")
	}
	return names
}

func relayRows(t *testing.T, r *Relay) int {
	t.Helper()
	var n int
	if err := r.pool.QueryRow(t.Context(), `SELECT count(*) FROM outbox.relays WHERE id = $1`, r.cfg.Name).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// A Start that fails once some services run stops them again, removes the
// relay's row, and leaves the relay able to start.
func TestStartFailureLeavesNothingStarted(t *testing.T) {
	t.Parallel()
	r, _ := newServiceRelay(t)
	// The claimer, started last, is running already: Start fails there.
	if err := r.claimer.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	err := r.Start(t.Context())
	if err == nil {
		t.Fatal("Start succeeded with its claimer running")
	}
	t.Logf("Start: %v", err)
	if got := running(r); len(got) != 1 || got[0] != "claimer" {
		t.Fatalf("running after a failed Start: %q, want only the claimer started before it", got)
	}
	if n := relayRows(t, r); n != 0 {
		t.Fatalf("%d relay rows after a failed Start, want 0", n)
	}
	if r.Health().Ready {
		t.Fatal("ready after a failed Start")
	}
	if err := r.claimer.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	// Nothing was left half started: it starts now, and stops.
	if err := r.Start(t.Context()); err != nil {
		t.Fatalf("Start after a failed Start: %v", err)
	}
	if len(running(r)) != 9 || relayRows(t, r) != 1 {
		t.Fatalf("running %q, relay rows %d after Start", running(r), relayRows(t, r))
	}
	waitFor(t, 10*time.Second, "ready", func() bool { return r.Health().Ready })
	r.Stop()
	if got := running(r); len(got) != 0 {
		t.Fatalf("running after Stop: %q", got)
	}
	if n := relayRows(t, r); n != 0 {
		t.Fatalf("%d relay rows after Stop, want 0", n)
	}
}

// A Start refused by the database (another live relay has the name)
// starts nothing; once the name is free the same relay starts.
func TestStartRefusedByTheDatabaseCanBeRetried(t *testing.T) {
	t.Parallel()
	r, pool := newServiceRelay(t)
	other, err := New(pool, &okProvider{}, Config{Name: r.cfg.Name, Lease: MinLease})
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := r.Start(t.Context()); err == nil {
		t.Fatal("Start succeeded beside a live relay of the same name")
	}
	if got := running(r); len(got) != 0 {
		t.Fatalf("running after a refused Start: %q", got)
	}
	other.Stop()
	if err := r.Start(t.Context()); err != nil {
		t.Fatalf("Start once the name is free: %v", err)
	}
	r.Stop()
}

// A stopped relay says it cannot start again; Stop is safe twice, at the
// same time, and before Start.
func TestStoppedRelayCannotStartAgain(t *testing.T) {
	t.Parallel()
	r, _ := newServiceRelay(t)
	r.Stop() // before Start: nothing to do
	if err := r.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := r.Start(t.Context()); err == nil || errors.Is(err, ErrStopped) {
		t.Fatalf("second Start = %v, want already started", err)
	}
	done := make(chan struct{})
	go func() { r.Stop(); close(done) }()
	r.Stop()
	<-done
	if err := r.Start(t.Context()); !errors.Is(err, ErrStopped) {
		t.Fatalf("Start after Stop = %v, want ErrStopped", err)
	}
	if err := r.Run(t.Context()); !errors.Is(err, ErrStopped) {
		t.Fatalf("Run after Stop = %v, want ErrStopped", err)
	}
	if got := running(r); len(got) != 0 {
		t.Fatalf("running: %q", got)
	}
}
