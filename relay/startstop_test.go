package relay

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestUnitStartStop(t *testing.T) {
	t.Parallel()
	s := &startStop{name: "test"}
	if err := s.stop(t.Context()); err != nil {
		t.Fatalf("stop before start: %v", err)
	}
	for round := range 2 { // started again once stopped
		ran := make(chan struct{})
		ended := make(chan struct{})
		if err := s.start(t.Context(), func(ctx context.Context) {
			close(ran)
			<-ctx.Done()
			close(ended)
		}); err != nil {
			t.Fatalf("round %d: start: %v", round, err)
		}
		if err := s.start(t.Context(), func(context.Context) {}); err == nil || !strings.Contains(err.Error(), "test: already started") {
			t.Fatalf("round %d: second start = %v, want already started", round, err)
		}
		<-ran
		if !s.running() {
			t.Fatalf("round %d: not running after start", round)
		}
		if err := s.stop(t.Context()); err != nil {
			t.Fatalf("round %d: stop: %v", round, err)
		}
		select {
		case <-ended:
		default:
			t.Fatalf("round %d: stop returned before the goroutine ended", round)
		}
		if err := s.stop(t.Context()); err != nil || s.running() {
			t.Fatalf("round %d: second stop = %v, running %v", round, err, s.running())
		}
	}
}

func TestUnitStartStopIgnoresCallersCancel(t *testing.T) {
	t.Parallel()
	s := &startStop{name: "test"}
	ctx, cancel := context.WithCancel(t.Context())
	got := make(chan context.Context, 1)
	if err := s.start(ctx, func(ctx context.Context) { got <- ctx; <-ctx.Done() }); err != nil {
		t.Fatal(err)
	}
	svcCtx := <-got
	cancel() // the caller's context: a cancellation would reach svcCtx at once
	if err := svcCtx.Err(); err != nil {
		t.Fatalf("the service's context ended with its caller's: %v", err)
	}
	if err := s.stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	if svcCtx.Err() == nil {
		t.Fatal("stop left the service's context running")
	}
}

func TestUnitStartStopBoundedByContext(t *testing.T) {
	t.Parallel()
	s := &startStop{name: "stuck"}
	release := make(chan struct{})
	if err := s.start(t.Context(), func(context.Context) { <-release }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	if err := s.stop(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("stop of a stuck service = %v, want deadline exceeded", err)
	}
	if !s.running() {
		t.Fatal("a service whose stop timed out counts as stopped")
	}
	close(release)
	if err := s.stop(t.Context()); err != nil || s.running() {
		t.Fatalf("stop again = %v, running %v", err, s.running())
	}
}

// fakeService records its starts and stops in a shared log.
type fakeService struct {
	name    string
	failing bool
	mu      *sync.Mutex
	log     *[]string
}

func (f *fakeService) Start(context.Context) error {
	if f.failing {
		return errors.New(f.name + ": refused")
	}
	f.mu.Lock()
	*f.log = append(*f.log, "start "+f.name)
	f.mu.Unlock()
	return nil
}

func (f *fakeService) Stop(context.Context) error {
	f.mu.Lock()
	*f.log = append(*f.log, "stop "+f.name)
	f.mu.Unlock()
	return nil
}

func TestUnitStartAllStopAll(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		failAt  int // -1: none
		wantErr bool
		want    []string
	}{
		{"all start, stop in reverse", -1, false, []string{"start a", "start b", "start c", "stop c", "stop b", "stop a"}},
		{"first fails: nothing started", 0, true, nil},
		{"third fails: the two started are stopped in reverse", 2, true, []string{"start a", "start b", "stop b", "stop a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			var log []string
			var svcs []service
			for i, n := range []string{"a", "b", "c"} {
				svcs = append(svcs, &fakeService{name: n, failing: i == tc.failAt, mu: &mu, log: &log})
			}
			err := startAll(t.Context(), svcs)
			if (err != nil) != tc.wantErr {
				t.Fatalf("startAll = %v, want error %v", err, tc.wantErr)
			}
			if err == nil {
				if err := stopAll(t.Context(), svcs); err != nil {
					t.Fatal(err)
				}
			}
			if !slices.Equal(log, tc.want) {
				t.Fatalf("got %q, want %q", log, tc.want)
			}
		})
	}
}
