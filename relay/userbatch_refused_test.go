package relay_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
	"github.com/outbox-relay/outbox-relay/provider/talkjs"
	"github.com/outbox-relay/outbox-relay/relay"
)

// refusingName is the fake over HTTP, except that TalkJS refuses (400,
// naming the entry) any user whose name is refusedName: content TalkJS
// judges invalid though the payload passed validation.
type refusingName struct {
	*talkjs.Client
}

const refusedName = "Refused"

func refusal(ids []string) error {
	reasons := make([]string, len(ids))
	for i := range ids {
		reasons[i] = "name refused by the test"
	}
	return &provider.Error{Kind: provider.Permanent, Status: 400, InvalidIDs: ids, InvalidReasons: reasons,
		Err: fmt.Errorf("test: users %q refused", ids)}
}

func (p refusingName) PutUser(ctx context.Context, u provider.User) error {
	if u.Name == refusedName {
		return refusal([]string{u.ID})
	}
	return p.Client.PutUser(ctx, u)
}

func (p refusingName) PutUsers(ctx context.Context, users []provider.User) error {
	var bad []string
	for _, u := range users {
		if u.Name == refusedName {
			bad = append(bad, u.ID)
		}
	}
	if len(bad) > 0 {
		return refusal(bad)
	}
	return p.Client.PutUsers(ctx, users)
}

// A user shared by two intents of one batch is sent with the later
// intent's content; TalkJS refuses that content. Only the later intent
// carries it: the earlier one, whose own content for the user is valid,
// is not dead-lettered for it, but delivered with its own content.
func TestBatchSyncRefusedLaterContentSparesEarlierIntent(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	ids := b.insertSQL(t, []outbox.Intent{sellerNamed("a", 1, "Seller 1"), sellerNamed("b", 2, refusedName)})
	cfg := withLogs(testConfig("refused-later"), b)
	cfg.Lease = 6 * time.Second
	r, err := relay.New(b.pool, refusingName{leaseClient(t, b, cfg.Lease)}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)

	c := b.waitSettled(t, 30*time.Second)
	if c["done"] != 1 || c["dead"] != 1 {
		t.Fatalf("states = %v, want 1 done and 1 dead", c)
	}
	if state, _, lastErr := b.intentState(t, ids[0]); state != "done" {
		t.Errorf("the earlier intent is %s (%q), want done: its own content for the seller is valid", state, lastErr)
	}
	if state, _, _ := b.intentState(t, ids[1]); state != "dead" {
		t.Errorf("the later intent is %s, want dead: TalkJS refused its seller", state)
	}
	b.wantSeller(t, b.fake, "Seller 1")
}
