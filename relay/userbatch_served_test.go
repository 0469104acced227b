package relay_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
	"github.com/outbox-relay/outbox-relay/provider/talkjs"
	"github.com/outbox-relay/outbox-relay/relay"
)

// hangingUsers is the fake over HTTP, except that its first batch users
// call hangs until its context ends (reporting how it ended), and PUTs
// of conversation hold hang until released.
type hangingUsers struct {
	*talkjs.Client
	hold     string
	release  chan struct{}
	once     atomic.Bool
	started  chan struct{}
	usersEnd chan error
}

func (p *hangingUsers) PutUsers(ctx context.Context, users []provider.User) error {
	if p.once.CompareAndSwap(false, true) {
		close(p.started)
		<-ctx.Done()
		p.usersEnd <- ctx.Err()
		return ctx.Err()
	}
	return p.Client.PutUsers(ctx, users)
}

func (p *hangingUsers) PutConversation(ctx context.Context, c provider.Conversation) error {
	if c.ID == p.hold {
		select {
		case <-p.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return p.Client.PutConversation(ctx, c)
}

// A batch users call that serves only intents that have ended (here one,
// passed to another relay) stops at once, though another intent of its
// claim batch is still being delivered: it is nobody's call any more, and
// a late upsert could overwrite the new owner's.
func TestBatchCallStopsWhenEveryIntentItServesHasEnded(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	ctx := t.Context()
	// x's users get records; b carries the same users and skips them, a
	// carries a new buyer and the seller with new content.
	first := b.startRelay(t, testConfig("served-0"), testSecret)
	b.waitDone(t, b.insertSQL(t, []outbox.Intent{orderIntent("x", 0)})[0])
	first.Stop()

	cfg := withLogs(testConfig("served-1"), b)
	cfg.Lease = 12 * time.Second // renewals every 4 s; a call's deadline about 10.8 s after it starts
	p := &hangingUsers{Client: leaseClient(t, b, cfg.Lease), hold: "b", release: make(chan struct{}),
		started: make(chan struct{}), usersEnd: make(chan error, 1)}
	defer close(p.release)
	skipper := orderIntent("x", 1)
	skipper.Conversation.ID = "b"
	ids := b.insertSQL(t, []outbox.Intent{skipper, sellerNamed("a", 2, "Seller 2")})
	r, err := relay.New(b.pool, p, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)

	select {
	case <-p.started:
	case <-time.After(20 * time.Second):
		t.Fatal("no batch users call")
	}
	// Another relay took a's lease over: the next renewal finds it gone.
	if _, err := b.pool.Exec(ctx, `UPDATE outbox.intents SET lease_token = lease_token + 1 WHERE id = $1`, ids[1]); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.usersEnd:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("the call for the lost intent ended with %v, want it cancelled once its only intent was lost", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the call for the lost intent never ended")
	}
	if state, _, _ := b.intentState(t, ids[0]); state != "delivering" {
		t.Errorf("b is %s, want still delivering (its conversation PUT is held)", state)
	}
}
