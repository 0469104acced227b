package relay

import (
	"errors"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/provider"
)

// A call sent before the breaker opened can succeed after it opened (it
// was already in flight). That answer must not close the breaker; a
// probe's answer must.
func TestGateIgnoresAnswersToCallsSentBeforeThePause(t *testing.T) {
	g := newGate(3, time.Now, nil)
	fail := &provider.Error{Kind: provider.Retryable, Status: 503, Err: errors.New("unavailable")}
	early, _ := g.send(false) // a call sent while the API looked fine
	for range 3 {
		gen, _ := g.send(false)
		g.observe(fail, gen)
	}
	if _, ok := g.send(false); ok {
		t.Fatal("the open breaker lets an ordinary call through")
	}
	if got := g.paused(); got != pauseBreaker {
		t.Fatalf("after 3 failures: paused %q, want %q", got, pauseBreaker)
	}
	g.observe(nil, early)
	if got := g.paused(); got != pauseBreaker {
		t.Fatalf("a success sent before the pause closed the breaker: paused %q", got)
	}
	g.observe(&provider.Error{Kind: provider.Permanent, Status: 400, Err: errors.New("bad")}, early)
	if got := g.paused(); got != pauseBreaker {
		t.Fatalf("a 400 sent before the pause closed the breaker: paused %q", got)
	}
	probe, ok := g.send(true)
	if !ok {
		t.Fatal("the open breaker holds back a probe's call")
	}
	g.observe(nil, probe) // the probe's success
	if got := g.paused(); got != "" {
		t.Fatalf("a probe's success left the gate paused: %q", got)
	}
}
