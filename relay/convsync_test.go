package relay_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
	"github.com/outbox-relay/outbox-relay/relay"
)

// A record of outbox.synced_conversations says "TalkJS holds exactly this
// content for this conversation": an intent whose conversation PUT would
// send that content skips it. These tests count the conversation PUTs the
// fake receives.

// chatIntent is the n-th intent of conversation conv: the conversation's
// content (users, subject, custom) is the same for every n, only the
// messages differ.
func chatIntent(conv string, n int) outbox.Intent {
	return outbox.Intent{
		Users: []outbox.User{
			{ID: "alice", Name: "Alice", Email: []string{"alice@example.com"}},
			{ID: "bob", Name: "Bob", Email: []string{"bob@example.com"}},
		},
		Conversation: outbox.Conversation{ID: conv, Subject: "Chat " + conv, Custom: map[string]string{"topic": "orders", "team": "support"}},
		Messages:     []outbox.Message{{Sender: "alice", Text: fmt.Sprintf("message %d", n)}},
	}
}

// convPuts is how many conversation PUTs the fake received.
func convPuts(fake *faketalkjs.Server) int64 {
	return fake.Stats().Routes[faketalkjs.RouteConversationPut]
}

// convRecords is how many conversation-sync records conv has.
func (b *bundle) convRecords(t *testing.T, conv string) int {
	t.Helper()
	var n int
	if err := b.pool.QueryRow(t.Context(),
		`SELECT count(*) FROM outbox.synced_conversations WHERE conversation_id = $1`, conv).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// deliverOne inserts an intent and waits until it is done.
func (b *bundle) deliverOne(t *testing.T, in outbox.Intent) int64 {
	t.Helper()
	id := b.insertSQL(t, []outbox.Intent{in})[0]
	b.waitDone(t, id)
	return id
}

// A second intent of an unchanged conversation makes no conversation PUT;
// the skip is recorded in outbox.attempts, and its messages are delivered.
func TestConversationUnchangedIsNotPutAgain(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	ctx := t.Context()
	b.startRelay(t, testConfig("r1"), testSecret)

	b.deliverOne(t, chatIntent("c", 1))
	second := b.deliverOne(t, chatIntent("c", 2))
	third := b.deliverOne(t, chatIntent("c", 3))
	if n := convPuts(b.fake); n != 1 {
		t.Errorf("%d conversation PUTs for three intents of an unchanged conversation, want 1", n)
	}
	if n := len(b.fake.Messages("c")); n != 3 {
		t.Errorf("%d messages stored, want 3", n)
	}
	for _, id := range []int64{second, third} {
		var outcome, why string
		var status *int
		if err := b.pool.QueryRow(ctx, `SELECT outcome, error, status FROM outbox.attempts
			WHERE intent_id = $1 AND step = 'conversation'`, id).Scan(&outcome, &why, &status); err != nil {
			t.Fatal(err)
		}
		if outcome != "skipped" || status != nil || why != "unchanged since last synchronised" {
			t.Errorf("intent %d: conversation attempt %s (status %v, %q), want skipped without a status", id, outcome, status, why)
		}
	}
}

// A change of anything the conversation PUT sends is PUT again; what the
// PUT sends alike (participants in another order, custom keys in another
// order, participants named or taken from the users) is not.
func TestConversationChangedIsPutAgain(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		change func(*outbox.Intent)
		puts   int64 // conversation PUTs for the two intents
	}{
		{"unchanged", func(*outbox.Intent) {}, 1},
		{"subject", func(in *outbox.Intent) { in.Conversation.Subject = "Renamed" }, 2},
		{"custom value", func(in *outbox.Intent) { in.Conversation.Custom["topic"] = "refunds" }, 2},
		{"custom key added", func(in *outbox.Intent) { in.Conversation.Custom["extra"] = "" }, 2},
		{"participant added", func(in *outbox.Intent) {
			in.Users = append(in.Users, outbox.User{ID: "carol", Name: "Carol", Email: []string{"carol@example.com"}})
		}, 2},
		{"participants named, same set", func(in *outbox.Intent) {
			in.Conversation.Participants = []string{"bob", "alice"}
		}, 1},
		{"participants named, fewer", func(in *outbox.Intent) {
			in.Conversation.Participants = []string{"alice"}
		}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, faketalkjs.Faults{})
			b.startRelay(t, testConfig("r1"), testSecret)
			b.deliverOne(t, chatIntent("c", 1))
			in := chatIntent("c", 2)
			tt.change(&in)
			b.deliverOne(t, in)
			if n := convPuts(b.fake); n != tt.puts {
				t.Errorf("%d conversation PUTs, want %d", n, tt.puts)
			}
			c, _ := b.fake.Conversation("c")
			if c.Subject != in.Conversation.Subject || c.Custom["topic"] != in.Conversation.Custom["topic"] {
				t.Errorf("TalkJS holds subject %q, topic %q; want the second intent's %q, %q",
					c.Subject, c.Custom["topic"], in.Conversation.Subject, in.Conversation.Custom["topic"])
			}
			if n := b.convRecords(t, "c"); n != 1 {
				t.Errorf("%d records of the conversation, want 1", n)
			}
		})
	}
}

// The conversation was deleted at TalkJS behind its record's back: the
// next intent skips the PUT and its messages POST gets 404. The record
// goes, and the intent is tried again: that attempt PUTs the conversation
// and delivers.
func TestConversationRecordInvalidatedBy404(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	ctx := t.Context()
	b.startRelay(t, testConfig("r1"), testSecret)

	b.deliverOne(t, chatIntent("c", 1))
	b.fake.DeleteConversation("c")
	id := b.deliverOne(t, chatIntent("c", 2))

	if n := convPuts(b.fake); n != 2 {
		t.Errorf("%d conversation PUTs, want 2: the first intent's, and the retry's after the 404", n)
	}
	if msgs := b.fake.Messages("c"); len(msgs) != 1 || msgs[0].Text != "message 2" {
		t.Errorf("TalkJS holds %v in the conversation, want the second intent's message", msgs)
	}
	rows, err := b.pool.Query(ctx, `SELECT attempt, step, outcome, coalesce(status, 0) FROM outbox.attempts
		WHERE intent_id = $1 ORDER BY attempt, started_at, step DESC`, id)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for rows.Next() {
		var attempt, status int
		var step, outcome string
		if err := rows.Scan(&attempt, &step, &outcome, &status); err != nil {
			t.Fatal(err)
		}
		if step != "user" {
			got = append(got, fmt.Sprintf("%d %s %s %d", attempt, step, outcome, status))
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	want := []string{"1 conversation skipped 0", "1 messages permanent 404", "2 conversation ok 0", "2 messages ok 0"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("attempts:\n got %q\nwant %q", got, want)
	}
	if n := b.convRecords(t, "c"); n != 1 {
		t.Errorf("%d records after the retry's 200, want 1", n)
	}
}

// failConversation makes the conversation PUTs of one conversation end
// without a trusted answer while failing is set: applied and then answered
// 500, or held until the call's deadline (no answer).
type failConversation struct {
	provider.Provider
	conv    string
	hang    bool
	failing atomic.Bool
	failed  atomic.Int64
}

func (f *failConversation) PutConversation(ctx context.Context, c provider.Conversation) error {
	if c.ID != f.conv || !f.failing.Load() {
		return f.Provider.PutConversation(ctx, c)
	}
	defer f.failed.Add(1)
	if f.hang {
		<-ctx.Done()
		return ctx.Err()
	}
	if err := f.Provider.PutConversation(ctx, c); err != nil {
		return err
	}
	return &provider.Error{Kind: provider.Retryable, Status: 500, Err: errors.New("applied, then 500")}
}

// A conversation PUT that fails (TalkJS applied it and answered 500, or
// never answered) leaves no record: an intent carrying the content recorded
// before PUTs it again, and TalkJS ends with it.
func TestFailedConversationPutLeavesNoRecord(t *testing.T) {
	t.Parallel()
	for _, hang := range []bool{false, true} {
		t.Run(fmt.Sprintf("hang=%t", hang), func(t *testing.T) {
			t.Parallel()
			b := setup(t, faketalkjs.Faults{})
			ctx := t.Context()
			cfg := slowRetries(withLogs(testConfig("r1"), b))
			client := b.client(t, testSecret)
			if hang {
				cfg.Lease = 4 * time.Second // a hung call ends a tenth of the lease before its end
				client = b.clientWithTimeout(t, relay.MaxCallTimeout(cfg.Lease))
			}
			prov := &failConversation{Provider: client, conv: "c", hang: hang}
			r, err := relay.New(b.pool, prov, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if err := r.Start(ctx); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(r.Stop)

			b.deliverOne(t, chatIntent("c", 1))
			if n := b.convRecords(t, "c"); n != 1 {
				t.Fatalf("%d records after a 200, want 1", n)
			}
			prov.failing.Store(true)
			renamed := chatIntent("c", 2)
			renamed.Conversation.Subject = "Renamed"
			id := b.insertSQL(t, []outbox.Intent{renamed})[0]
			waitFor(t, 20*time.Second, "the failed conversation PUT to be recorded", func() bool {
				var n int
				err := b.pool.QueryRow(ctx, `SELECT count(*) FROM outbox.attempts
					WHERE intent_id = $1 AND step = 'conversation' AND outcome = 'retryable'`, id).Scan(&n)
				return err == nil && n > 0
			})
			if n := b.convRecords(t, "c"); n != 0 {
				t.Errorf("%d records after a failed PUT, want 0", n)
			}
			prov.failing.Store(false)

			// The failing intent waits an hour; its conversation's next
			// intents wait behind it. Cancel it so the old content can go.
			if a, err := relay.Cancel(ctx, b.pool, relay.Selection{IDs: []int64{id}}, false); err != nil || len(a.Changed) != 1 {
				t.Fatalf("cancel: %+v, %v", a, err)
			}
			before := convPuts(b.fake)
			b.deliverOne(t, chatIntent("c", 3))
			if n := convPuts(b.fake) - before; n != 1 {
				t.Errorf("%d conversation PUTs of the recorded content after the failure, want 1", n)
			}
			if c, _ := b.fake.Conversation("c"); c.Subject != "Chat c" {
				t.Errorf("TalkJS holds subject %q, want %q", c.Subject, "Chat c")
			}
		})
	}
}

// With OUTBOX_USER_SYNC_TTL=0 no conversation is skipped and no record is
// written; the clean-up deletes the records left from before.
func TestNoConversationSkipWithoutTTL(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	ctx := t.Context()
	cfg := testConfig("r1")
	cfg.AppID = "app"
	cfg.UserSyncTTL = -1
	r := b.startRelay(t, cfg, testSecret)

	b.deliverOne(t, chatIntent("c", 1))
	b.deliverOne(t, chatIntent("c", 2))
	if n := convPuts(b.fake); n != 2 {
		t.Errorf("%d conversation PUTs, want 2: none skipped", n)
	}
	if n := b.convRecords(t, "c"); n != 0 {
		t.Errorf("%d records written with skipping off, want 0", n)
	}

	if _, err := b.pool.Exec(ctx, `INSERT INTO outbox.synced_conversations (app_id, conversation_id, content_hash, synced_at)
		VALUES ('app', 'c', '\x00', now()), ('other-app', 'c', '\x00', now() - interval '2 days')`); err != nil {
		t.Fatal(err)
	}
	run, err := r.RetainOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n := b.convRecords(t, "c"); n != 0 || run.ConversationSyncs != 2 {
		t.Errorf("%d records left after the clean-up (it counted %d), want 0 (2)", n, run.ConversationSyncs)
	}
}

// A record older than the TTL is not trusted, and retention deletes it:
// this app's past the TTL, another app's past a day.
func TestConversationRecordsExpire(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	ctx := t.Context()
	cfg := testConfig("r1")
	cfg.AppID = "app"
	cfg.UserSyncTTL = time.Hour
	r := b.startRelay(t, cfg, testSecret)

	b.deliverOne(t, chatIntent("c", 1))
	if _, err := b.pool.Exec(ctx, `UPDATE outbox.synced_conversations SET synced_at = now() - interval '61 minutes'`); err != nil {
		t.Fatal(err)
	}
	b.deliverOne(t, chatIntent("c", 2))
	if n := convPuts(b.fake); n != 2 {
		t.Errorf("%d conversation PUTs, want 2: the record had expired", n)
	}

	if _, err := b.pool.Exec(ctx, `
		UPDATE outbox.synced_conversations SET synced_at = now() - interval '61 minutes';
		INSERT INTO outbox.synced_conversations (app_id, conversation_id, content_hash, synced_at)
		VALUES ('app', 'fresh', '\x00', now()),
		       ('other-app', 'old', '\x00', now() - interval '25 hours'),
		       ('other-app', 'young', '\x00', now() - interval '2 hours')`); err != nil {
		t.Fatal(err)
	}
	run, err := r.RetainOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := b.pool.Query(ctx, `SELECT app_id || '/' || conversation_id FROM outbox.synced_conversations ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		left = append(left, s)
	}
	if fmt.Sprint(left) != "[app/fresh other-app/young]" || run.ConversationSyncs != 2 {
		t.Errorf("records left %v (%d deleted), want [app/fresh other-app/young] (2)", left, run.ConversationSyncs)
	}
}

// The completion keeps a conversation record only when it can vouch for
// it: a 200 in a result it recorded.
func TestCompletionKeepsOnlyConversationRecordsItCanVouchFor(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		failed bool // the conversation PUT failed
		fenced bool // the intent's lease passed to another relay
		want   int
	}{
		{"200", false, false, 1},
		{"failed", true, false, 0},
		{"200 in a fenced result", false, true, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, faketalkjs.Faults{})
			ctx := t.Context()
			id := b.insertSQL(t, []outbox.Intent{chatIntent("c", 1)})[0]
			// A record of other content, which the claim must delete.
			if _, err := b.pool.Exec(ctx, `INSERT INTO outbox.synced_conversations (app_id, conversation_id, content_hash, synced_at)
				VALUES ('', 'c', '\x00', now())`); err != nil {
				t.Fatal(err)
			}
			r, err := relay.New(b.pool, b.client(t, testSecret), testConfig("r1"))
			if err != nil {
				t.Fatal(err)
			}
			claimed, err := r.Claim(ctx, 1)
			if err != nil || len(claimed) != 1 || claimed[0].ConvSkip() {
				t.Fatalf("claimed %d (err %v), want the intent, not skipping its conversation", len(claimed), err)
			}
			if n := b.convRecords(t, "c"); n != 0 {
				t.Errorf("%d records after the claim, want 0: it deletes the record of a conversation it will PUT", n)
			}
			if tt.fenced {
				if _, err := b.pool.Exec(ctx, `UPDATE outbox.intents SET lease_token = lease_token + 1 WHERE id = $1`, id); err != nil {
					t.Fatal(err)
				}
			}
			if err := r.CompleteConversationPuts(ctx, claimed, map[int64]bool{id: tt.failed}); err != nil {
				t.Fatal(err)
			}
			if n := b.convRecords(t, "c"); n != tt.want {
				t.Errorf("%d records, want %d", n, tt.want)
			}
		})
	}
}

// The claim's content hash is that of what the conversation PUT sends,
// canonical: bodies TalkJS applies alike hash alike, any other difference
// hashes differently.
func TestConversationContentHash(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	hash := func(payload string) []byte {
		t.Helper()
		var h []byte
		if err := b.pool.QueryRow(t.Context(),
			`SELECT `+relay.ConversationContentHashSQL+` FROM (SELECT $1::jsonb AS payload) c`, payload).Scan(&h); err != nil {
			t.Fatalf("hash of %s: %v", payload, err)
		}
		return h
	}
	const base = `{"users": [{"id": "a", "name": "A"}, {"id": "b", "name": "B"}],
		"conversation": {"id": "c", "subject": "S", "custom": {"k": "v", "l": "w"}}, "messages": [{"sender": "a", "text": "hi"}]}`
	tests := []struct {
		name  string
		other string
		equal bool
	}{
		{"identical", base, true},
		{"other messages", `{"users": [{"id": "a", "name": "A"}, {"id": "b", "name": "B"}],
			"conversation": {"id": "c", "subject": "S", "custom": {"k": "v", "l": "w"}}, "messages": [{"sender": "b", "text": "bye"}]}`, true},
		{"other user content", `{"users": [{"id": "a", "name": "Ann"}, {"id": "b", "name": "B", "role": "r"}],
			"conversation": {"id": "c", "subject": "S", "custom": {"k": "v", "l": "w"}}}`, true},
		{"users in another order", `{"users": [{"id": "b", "name": "B"}, {"id": "a", "name": "A"}],
			"conversation": {"id": "c", "subject": "S", "custom": {"l": "w", "k": "v"}}}`, true},
		{"participants named as the users", `{"users": [{"id": "a", "name": "A"}, {"id": "b", "name": "B"}],
			"conversation": {"id": "c", "subject": "S", "participants": ["b", "a"], "custom": {"k": "v", "l": "w"}}}`, true},
		{"participants named, no users", `{"conversation": {"id": "c", "subject": "S", "participants": ["a", "b", "a"], "custom": {"k": "v", "l": "w"}}}`, true},
		{"empty participants mean the users'", `{"users": [{"id": "a", "name": "A"}, {"id": "b", "name": "B"}],
			"conversation": {"id": "c", "subject": "S", "participants": [], "custom": {"k": "v", "l": "w"}}}`, true},
		{"other subject", `{"users": [{"id": "a", "name": "A"}, {"id": "b", "name": "B"}],
			"conversation": {"id": "c", "subject": "T", "custom": {"k": "v", "l": "w"}}}`, false},
		{"no subject", `{"users": [{"id": "a", "name": "A"}, {"id": "b", "name": "B"}],
			"conversation": {"id": "c", "custom": {"k": "v", "l": "w"}}}`, false},
		{"other custom value", `{"users": [{"id": "a", "name": "A"}, {"id": "b", "name": "B"}],
			"conversation": {"id": "c", "subject": "S", "custom": {"k": "v", "l": "x"}}}`, false},
		{"custom key less", `{"users": [{"id": "a", "name": "A"}, {"id": "b", "name": "B"}],
			"conversation": {"id": "c", "subject": "S", "custom": {"k": "v"}}}`, false},
		{"a participant more", `{"users": [{"id": "a", "name": "A"}, {"id": "b", "name": "B"}, {"id": "d", "name": "D"}],
			"conversation": {"id": "c", "subject": "S", "custom": {"k": "v", "l": "w"}}}`, false},
		{"participants named, fewer", `{"users": [{"id": "a", "name": "A"}, {"id": "b", "name": "B"}],
			"conversation": {"id": "c", "subject": "S", "participants": ["a"], "custom": {"k": "v", "l": "w"}}}`, false},
	}
	want := hash(base)
	for _, tt := range tests {
		if got := hash(tt.other); bytes.Equal(got, want) != tt.equal {
			t.Errorf("%s: equal hashes %t, want %t", tt.name, !tt.equal, tt.equal)
		}
	}

	// Fields the PUT leaves out when empty hash as if absent.
	absent := hash(`{"conversation": {"id": "c"}}`)
	for _, p := range []string{
		`{"conversation": {"id": "c", "subject": ""}}`,
		`{"conversation": {"id": "c", "subject": null, "custom": null, "participants": null}}`,
		`{"conversation": {"id": "c", "custom": {}, "participants": []}}`,
		`{"users": [], "conversation": {"id": "c"}}`,
	} {
		if !bytes.Equal(hash(p), absent) {
			t.Errorf("%s hashes unlike a conversation with only its id", p)
		}
	}
	// The conversation id is the record's key, not its content.
	if !bytes.Equal(hash(`{"conversation": {"id": "d"}}`), absent) {
		t.Errorf("the conversation id changes the content hash")
	}

}
