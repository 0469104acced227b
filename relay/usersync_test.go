package relay_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
	"github.com/outbox-relay/outbox-relay/relay"
)

// A record of outbox.synced_users says "TalkJS holds exactly this content
// for this user". These tests change a user's content behind a record's
// back in each way a PUT can end without the relay knowing TalkJS's copy,
// then deliver an intent carrying the recorded content: it must be PUT,
// not skipped, and TalkJS must end with it.

// sellerNamed is an order intent whose shared user "seller" has the given
// name: the content the tests change.
func sellerNamed(conv string, n int, name string) outbox.Intent {
	in := orderIntent(conv, n)
	in.Users[1].Name = name
	return in
}

// waitDone waits until the intent is done.
func (b *bundle) waitDone(t *testing.T, id int64) {
	t.Helper()
	waitFor(t, 20*time.Second, "the intent to be done", func() bool {
		var state string
		err := b.pool.QueryRow(t.Context(), `SELECT state FROM outbox.intents WHERE id = $1`, id).Scan(&state)
		return err == nil && state == "done"
	})
}

// wantSeller checks the name TalkJS holds for the seller.
func (b *bundle) wantSeller(t *testing.T, fake *faketalkjs.Server, name string) {
	t.Helper()
	u, ok := fake.User("seller")
	if !ok || u.Name != name {
		t.Errorf("TalkJS holds seller %q (stored %t), want %q", u.Name, ok, name)
	}
}

// slowRetries keeps an intent that failed out of the way for the test.
func slowRetries(cfg relay.Config) relay.Config {
	cfg.Retry = relay.RetryPolicy{Base: time.Hour, Max: time.Hour}
	return cfg
}

// A user PUT that TalkJS applied but answered with 500: the relay cannot
// tell the new content is stored, so the old record must go.
func TestUserPutAppliedThen500LeavesNoRecord(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	ctx := t.Context()
	b.startRelay(t, slowRetries(testConfig("r1")), testSecret)

	b.waitDone(t, b.insertSQL(t, []outbox.Intent{sellerNamed("a", 1, "Old")})[0])
	b.fake.SetFaults(faketalkjs.Faults{FailAfterUserIDs: []string{"seller"}})
	id := b.insertSQL(t, []outbox.Intent{sellerNamed("b", 2, "New")})[0]
	waitFor(t, 20*time.Second, "the seller's PUT to be answered 500 and recorded", func() bool {
		var n int
		err := b.pool.QueryRow(ctx, `SELECT count(*) FROM outbox.attempts
			WHERE intent_id = $1 AND step = 'user' AND target = 'seller' AND status = 500`, id).Scan(&n)
		return err == nil && n > 0
	})
	b.fake.SetFaults(faketalkjs.Faults{})
	b.wantSeller(t, b.fake, "New") // applied, whatever the answer said

	b.waitDone(t, b.insertSQL(t, []outbox.Intent{sellerNamed("c", 3, "Old")})[0])
	b.wantSeller(t, b.fake, "Old")
}

// panicOn panics in the conversation PUT of one conversation: the intent
// goes dead after its user PUTs succeeded, and its result says nothing
// of them.
type panicOn struct {
	provider.Provider
	conv string
}

func (p panicOn) PutConversation(ctx context.Context, c provider.Conversation) error {
	if c.ID == p.conv {
		panic("conversation " + c.ID)
	}
	return p.Provider.PutConversation(ctx, c)
}

// A user PUT that succeeded in an intent that then went dead without its
// result naming the PUT (a panic here; a crash, or a result that could not
// be written, alike): the old record must not survive it.
func TestUserPutInAnIntentThatWentDeadLeavesNoStaleRecord(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	r, err := relay.New(b.pool, panicOn{Provider: b.client(t, testSecret), conv: "b"}, withLogs(testConfig("r1"), b))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)

	b.waitDone(t, b.insertSQL(t, []outbox.Intent{sellerNamed("a", 1, "Old")})[0])
	id := b.insertSQL(t, []outbox.Intent{sellerNamed("b", 2, "New")})[0]
	waitFor(t, 20*time.Second, "the panicking intent to be dead", func() bool {
		var state string
		err := b.pool.QueryRow(t.Context(), `SELECT state FROM outbox.intents WHERE id = $1`, id).Scan(&state)
		return err == nil && state == "dead"
	})
	b.wantSeller(t, b.fake, "New")

	b.waitDone(t, b.insertSQL(t, []outbox.Intent{sellerNamed("c", 3, "Old")})[0])
	b.wantSeller(t, b.fake, "Old")
}

// holdConversation holds the conversation PUT of one conversation until
// released, keeping its relay's only slot busy.
type holdConversation struct {
	provider.Provider
	conv    string
	entered chan struct{}
	release chan struct{}
}

func (h *holdConversation) PutConversation(ctx context.Context, c provider.Conversation) error {
	if c.ID == h.conv {
		close(h.entered)
		select {
		case <-h.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return h.Provider.PutConversation(ctx, c)
}

// Relay A PUT the seller's old content; relay B then PUT newer content and
// recorded it. A's memory of its own PUT must not outweigh the database:
// an intent with the old content, delivered by A, PUTs it again.
func TestRelayMemoryNeverOverridesTheDatabase(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	held := &holdConversation{Provider: b.client(t, testSecret), conv: "blocker",
		entered: make(chan struct{}), release: make(chan struct{})}
	cfgA := testConfig("relay-a")
	cfgA.Concurrency = 1 // held on "blocker", it claims nothing else
	a, err := relay.New(b.pool, held, withLogs(cfgA, b))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Stop)

	b.waitDone(t, b.insertSQL(t, []outbox.Intent{sellerNamed("a", 1, "Old")})[0])
	blocker := b.insertSQL(t, []outbox.Intent{sellerNamed("blocker", 2, "Old")})[0]
	select {
	case <-held.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("relay-a never reached the blocker's conversation")
	}

	relayB := b.startRelay(t, testConfig("relay-b"), testSecret)
	b.waitDone(t, b.insertSQL(t, []outbox.Intent{sellerNamed("b", 3, "New")})[0])
	relayB.Stop()
	b.wantSeller(t, b.fake, "New")

	close(held.release)
	b.waitDone(t, blocker)
	b.waitDone(t, b.insertSQL(t, []outbox.Intent{sellerNamed("c", 4, "Old")})[0])
	b.wantSeller(t, b.fake, "Old")
}

// Records are per TalkJS app: a copy of the database whose relay delivers
// to another app (staging) does not skip users that app never received.
func TestSyncRecordsArePerApp(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	prodCfg := testConfig("prod")
	prodCfg.AppID = "prod-app"
	prod := b.startRelay(t, prodCfg, testSecret)
	b.waitDone(t, b.insertSQL(t, []outbox.Intent{sellerNamed("a", 1, "Same")})[0])
	prod.Stop()

	staging := faketalkjs.New(faketalkjs.Config{AppID: testAppID, SecretKey: testSecret})
	srv := httptest.NewServer(staging)
	t.Cleanup(srv.Close)
	client, err := newClient(srv.URL, testSecret, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	stagingCfg := testConfig("staging")
	stagingCfg.AppID = "staging-app"
	r, err := relay.New(b.pool, client, withLogs(stagingCfg, b))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)

	b.waitDone(t, b.insertSQL(t, []outbox.Intent{sellerNamed("b", 2, "Same")})[0])
	b.wantSeller(t, staging, "Same")
}

// With OUTBOX_USER_SYNC_TTL=0 (UserSyncTTL negative) no record is read or
// written, and the clean-up deletes the records left from before.
func TestNoSyncRecordsWithoutTTL(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	ctx := t.Context()
	cfg := testConfig("r1")
	cfg.AppID = "app"
	cfg.UserSyncTTL = -1
	r := b.startRelay(t, cfg, testSecret)

	b.waitDone(t, b.insertSQL(t, []outbox.Intent{sellerNamed("a", 1, "Old")})[0])
	b.waitDone(t, b.insertSQL(t, []outbox.Intent{sellerNamed("a", 2, "Old")})[0])
	var records int
	var puts int64
	if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM outbox.synced_users`).Scan(&records); err != nil {
		t.Fatal(err)
	}
	if records != 0 {
		t.Errorf("%d records written with skipping off, want 0", records)
	}
	var skipped int
	if err := b.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE outcome = 'ok'), count(*) FILTER (WHERE outcome = 'skipped')
		FROM outbox.attempts WHERE step = 'user'`).Scan(&puts, &skipped); err != nil {
		t.Fatal(err)
	}
	if puts != 4 || skipped != 0 {
		t.Errorf("%d user PUTs made and %d skipped, want 4 made: none skipped", puts, skipped)
	}

	if _, err := b.pool.Exec(ctx, `INSERT INTO outbox.synced_users (app_id, user_id, content_hash, synced_at)
		VALUES ('app', 'seller', '\x00', now()), ('other-app', 'seller', '\x00', now() - interval '2 days')`); err != nil {
		t.Fatal(err)
	}
	if _, err := r.RetainOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM outbox.synced_users`).Scan(&records); err != nil {
		t.Fatal(err)
	}
	if records != 0 {
		t.Errorf("%d records left after the clean-up, want 0", records)
	}
}

// The completion keeps a record only when it can vouch for it: every PUT
// of the user in the batch answered 200 for one content, in a result it
// recorded. Otherwise TalkJS may hold either content, or the one a new
// owner of the intent sent.
func TestCompletionKeepsOnlyRecordsItCanVouchFor(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		sellers []string // the seller's name in each intent of one batch
		failed  int      // index of the intent whose seller PUT failed, -1: none
		fenced  bool     // the first intent's lease passed to another relay
		want    int      // seller records left
	}{
		{"one content, all 200", []string{"A", "A"}, -1, false, 1},
		{"two contents in one batch", []string{"A", "B"}, -1, false, 0},
		{"a failure beside a success", []string{"A", "A"}, 1, false, 0},
		{"a 200 in a fenced result", []string{"A"}, -1, true, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, faketalkjs.Faults{})
			ctx := t.Context()
			var intents []outbox.Intent
			for i, name := range tt.sellers {
				intents = append(intents, sellerNamed(fmt.Sprint("c", i), i, name))
			}
			ids := b.insertSQL(t, intents)
			r, err := relay.New(b.pool, b.client(t, testSecret), testConfig("r1"))
			if err != nil {
				t.Fatal(err)
			}
			claimed, err := r.Claim(ctx, len(ids))
			if err != nil || len(claimed) != len(ids) {
				t.Fatalf("claimed %d of %d: %v", len(claimed), len(ids), err)
			}
			failed := map[int64][]string{}
			if tt.failed >= 0 {
				failed[ids[tt.failed]] = []string{"seller"}
			}
			if tt.fenced {
				if _, err := b.pool.Exec(ctx, `UPDATE outbox.intents SET lease_token = lease_token + 1 WHERE id = $1`, ids[0]); err != nil {
					t.Fatal(err)
				}
			}
			if err := r.CompleteUserPuts(ctx, claimed, failed); err != nil {
				t.Fatal(err)
			}
			var n int
			if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM outbox.synced_users WHERE user_id = 'seller'`).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != tt.want {
				t.Errorf("%d seller records, want %d", n, tt.want)
			}
		})
	}
}
