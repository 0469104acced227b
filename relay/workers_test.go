package relay

import (
	"log/slog"
	"testing"
	"time"
)

func TestUnitWorkerPool(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		timeout    time.Duration
		finishesIn time.Duration // 0: only when cancelled
		cancelled  bool
	}{
		{"workers finish: nothing cancelled", time.Minute, time.Millisecond, false},
		{"workers hang: cancelled at the shutdown timeout", 20 * time.Millisecond, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := newWorkerPool(workerPoolConfig{ShutdownTimeout: tc.timeout}, slog.New(slog.DiscardHandler), func() int { return 1 })
			if p.workCtx() != nil {
				t.Fatal("a pool not started has a context")
			}
			if err := p.Start(t.Context()); err != nil {
				t.Fatal(err)
			}
			if err := p.Start(t.Context()); err == nil {
				t.Fatal("second Start succeeded")
			}
			ctx := p.workCtx()
			cancelled := make(chan bool, 1)
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				var done <-chan time.Time
				if tc.finishesIn > 0 {
					done = time.After(tc.finishesIn)
				}
				select {
				case <-done:
					cancelled <- false
				case <-ctx.Done():
					cancelled <- true
				}
			}()
			if err := p.Stop(t.Context()); err != nil {
				t.Fatal(err)
			}
			select {
			case got := <-cancelled:
				if got != tc.cancelled {
					t.Fatalf("worker cancelled = %v, want %v", got, tc.cancelled)
				}
			default:
				t.Fatal("Stop returned before the worker")
			}
			if err := p.Stop(t.Context()); err != nil || p.workCtx() != nil {
				t.Fatalf("second Stop = %v, context %v", err, p.workCtx())
			}
			if err := p.Start(t.Context()); err != nil { // started again once stopped
				t.Fatal(err)
			}
			if err := p.Stop(t.Context()); err != nil {
				t.Fatal(err)
			}
		})
	}
}
