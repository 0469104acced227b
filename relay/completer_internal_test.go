package relay

import "testing"

func TestCompleterService(t *testing.T) {
	t.Parallel()
	r, pool := newServiceRelay(t)
	insertIntents(t, pool, 3)
	for round, n := range []int{2, 1} { // started again once stopped
		if err := r.completer.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		if err := r.completer.Start(t.Context()); err == nil {
			t.Fatal("second Start succeeded")
		}
		jobs, err := r.claimer.claim(t.Context(), n)
		if err != nil || len(jobs) != n {
			t.Fatalf("claim: %v, %d jobs", err, len(jobs))
		}
		for _, j := range jobs {
			r.completer.send(&result{intent: j, outcome: outcomeDone})
		}
		// Stop returns once every result sent has been written.
		stopService(t, r.completer)
		if got, want := countState(t, pool, "done"), 2+round*1; got != want {
			t.Fatalf("round %d: %d done after Stop, want %d", round, got, want)
		}
	}
}
