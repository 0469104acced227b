package relay

import (
	"context"
	"testing"
)

// A delivery waiting on another's user PUT that leaves early (its lease
// lost, the relay stopping) must not read the flight's outcome: the leader
// may be writing it at that moment. Run with -race.
func TestWaiterLeavingEarlyDoesNotReadTheFlight(t *testing.T) {
	t.Parallel()
	hash := []byte("h")
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	for range 200 {
		s := newUserFlights()
		f, leader := s.begin("u1", hash)
		w, waiter := s.begin("u1", hash)
		if !leader || waiter || w != f {
			t.Fatalf("begin: leader %t, second leader %t, shared %t; want one flight led by the first", leader, waiter, w == f)
		}
		ended := make(chan struct{})
		go func() {
			defer close(ended)
			s.end("u1", hash, f, true)
		}()
		if ok, err := w.wait(ctx); err == nil && !ok {
			t.Fatalf("wait returned neither the outcome nor ctx's error")
		}
		<-ended
	}
}
