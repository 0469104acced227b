package talkjs

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/provider"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
)

type answerLog struct {
	mu  sync.Mutex
	got []answerRec
}

type answerRec struct {
	status     int
	retryAfter time.Duration
}

func (l *answerLog) record(status int, _, retryAfter time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.got = append(l.got, answerRec{status, retryAfter})
}

func (l *answerLog) all() []answerRec {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]answerRec(nil), l.got...)
}

// OnAnswer hears of every request sent: its status (0 for none in time)
// and a 429's Retry-After; requests not sent and requests their caller
// cancelled are not reported.
func TestOnAnswerReportsEveryRequestSent(t *testing.T) {
	t.Parallel()
	// The bucket holds one token and refills every 10s: the second
	// request meets a 429 saying when.
	b := setup(t, faketalkjs.Faults{RateLimit: 0.1, Burst: 1}, func(c *Config) { c.Timeout = 300 * time.Millisecond })
	var log answerLog
	b.client.OnAnswer(log.record)
	ctx := t.Context()
	spendTheBucket(t, b)
	var pe *provider.Error
	// Not sent: an invalid id.
	if err := b.client.PutUser(ctx, provider.User{ID: "."}); err == nil {
		t.Fatal("PUT of user \".\" was sent")
	}
	// No answer in time.
	b.fake.SetFaults(faketalkjs.Faults{Hang: true})
	if err := b.client.PutUser(ctx, alice); !errors.As(err, &pe) || pe.Kind != provider.Retryable {
		t.Fatalf("PUT to a hung API: %v, want a retryable failure", err)
	}
	// Cancelled by its caller, once the fake holds the request (it was sent).
	cctx, cancel := context.WithCancel(ctx)
	sent := b.fake.Stats().Requests
	go func() {
		relaytest.Poll(5*time.Second, func() bool { return b.fake.Stats().Requests > sent })
		cancel()
	}()
	if err := b.client.PutUser(cctx, alice); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled PUT: %v, want context.Canceled", err)
	}
	got := log.all()
	want := []answerRec{{200, 0}, {429, 10 * time.Second}, {0, 0}}
	if len(got) != len(want) {
		t.Fatalf("answers reported %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("answers reported %v, want %v", got, want)
		}
	}
}

// With HoldRetryAfter, a 429's Retry-After holds every later request of
// the client; one whose deadline the hold would leave too little is not
// sent at all, and fails as a refusal of the client's own (Status 0).
// Without it, the request goes and meets the API's 429.
func TestHoldRetryAfter(t *testing.T) {
	t.Parallel()
	for _, hold := range []bool{true, false} {
		b := setup(t, faketalkjs.Faults{RateLimit: 0.1, Burst: 1}, func(c *Config) { c.Timeout = time.Second })
		if hold {
			b.client.HoldRetryAfter(time.Minute)
		}
		ctx := t.Context()
		spendTheBucket(t, b)
		var pe *provider.Error
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := b.client.PutUser(dctx, alice)
		cancel()
		requests := b.fake.Stats().Requests
		switch {
		case hold && (!errors.As(err, &pe) || pe.Kind != provider.RateLimited || pe.Status != 0 || pe.RetryAfter <= time.Second):
			t.Fatalf("held: third PUT %v, want the client's refusal with the hold left (about 10s)", err)
		case hold && requests != 2:
			t.Fatalf("held: the API saw %d requests, want 2", requests)
		case !hold && (!errors.As(err, &pe) || pe.Status != http.StatusTooManyRequests):
			t.Fatalf("not held: third PUT %v, want the API's 429", err)
		}
	}
}

// spendTheBucket sends two PUTs to a fake whose bucket holds one token:
// the first is answered 200, the second 429 with a Retry-After.
func spendTheBucket(t *testing.T, b *bundle) {
	t.Helper()
	if err := b.client.PutUser(t.Context(), alice); err != nil {
		t.Fatal(err)
	}
	var pe *provider.Error
	if err := b.client.PutUser(t.Context(), alice); !errors.As(err, &pe) || pe.Status != http.StatusTooManyRequests {
		t.Fatalf("second PUT: %v, want a 429", err)
	}
}
