// Package relaytest holds what the relay's tests share: typical intents,
// condition waits, SQL inserts, and the check that the fake TalkJS holds
// exactly what a set of intents describes.
package relaytest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
)

// OrderIntent is a typical intent: a buyer of its own and a shared seller,
// a conversation, a system message and a message from the buyer. n makes
// the texts unique.
func OrderIntent(conv string, n int) outbox.Intent {
	buyer := "buyer-" + conv
	return outbox.Intent{
		Users: []outbox.User{
			{ID: buyer, Name: "Buyer " + conv, Email: []string{buyer + "@example.com"}, Custom: map[string]string{"tier": "gold"}},
			{ID: "seller", Name: "Seller", Email: []string{"seller@example.com"}, Role: "seller"},
		},
		Conversation: outbox.Conversation{ID: conv, Subject: "Order " + conv, Custom: map[string]string{"n": fmt.Sprint(n)}},
		Messages: []outbox.Message{
			{Type: outbox.SystemMessage, Text: fmt.Sprintf("intent %d placed", n)},
			{Sender: buyer, Text: fmt.Sprintf("hello %d", n)},
		},
	}
}

// InsertSQL inserts intents with plain SQL, as an application in any
// language would, in slice order in one transaction, and returns their ids.
func InsertSQL(tb testing.TB, pool *pgxpool.Pool, intents []outbox.Intent) []int64 {
	tb.Helper()
	ctx := tb.Context()
	ids := make([]int64, 0, len(intents))
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		for _, in := range intents {
			payload, err := json.Marshal(in)
			if err != nil {
				return err
			}
			var id int64
			if err := tx.QueryRow(ctx, `INSERT INTO outbox.intents (payload) VALUES ($1::jsonb) RETURNING id`, payload).Scan(&id); err != nil {
				return err
			}
			ids = append(ids, id)
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return ids
}

// Counts returns the number of intents by state.
func Counts(tb testing.TB, pool *pgxpool.Pool) map[string]int {
	tb.Helper()
	rows, err := pool.Query(tb.Context(), `SELECT state, count(*) FROM outbox.intents GROUP BY state`)
	if err != nil {
		tb.Fatal(err)
	}
	out := map[string]int{}
	for rows.Next() {
		var s string
		var n int
		if err := rows.Scan(&s, &n); err != nil {
			tb.Fatal(err)
		}
		out[s] = n
	}
	if err := rows.Err(); err != nil {
		tb.Fatal(err)
	}
	return out
}

// pollInterval is how often Poll and WaitFor check their condition, at
// most: a check that takes longer (a count over a large table) waits
// pollIdle times as long before the next, so that waiting costs the
// machine at most a fifth of a core whatever the condition.
const (
	pollInterval = 10 * time.Millisecond
	pollIdle     = 4
)

// Poll checks cond every pollInterval (or more rarely, see pollIdle) until
// it returns true or timeout has passed, and returns how long that took
// and whether cond held. It is the tests' one condition wait: WaitFor is
// Poll failing the test.
func Poll(timeout time.Duration, cond func() bool) (time.Duration, bool) {
	start := time.Now()
	deadline := start.Add(timeout)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		<-timer.C
		checked := time.Now()
		if cond() {
			return time.Since(start), true
		}
		now := time.Now()
		if now.After(deadline) {
			return now.Sub(start), false
		}
		timer.Reset(max(pollInterval, pollIdle*now.Sub(checked)))
	}
}

// WaitFor waits until cond returns true (see Poll), failing tb if timeout
// passes first, and returns how long it waited.
func WaitFor(tb testing.TB, timeout time.Duration, what string, cond func() bool) time.Duration {
	tb.Helper()
	took, ok := Poll(timeout, cond)
	if !ok {
		tb.Fatalf("timed out after %s waiting for %s", timeout, what)
	}
	return took
}

// WaitSettled waits until no intent is pending or delivering and returns
// the counts by state.
func WaitSettled(tb testing.TB, pool *pgxpool.Pool, timeout time.Duration) map[string]int {
	tb.Helper()
	var c map[string]int
	WaitFor(tb, timeout, "all intents done or dead", func() bool {
		c = Counts(tb, pool)
		return c["pending"] == 0 && c["delivering"] == 0
	})
	return c
}

// CheckDelivered asserts the fake holds exactly what the intents describe:
// every user, every conversation with its participants and subject, and
// every message exactly once, in intent order within its conversation,
// never stored before its conversation and sender existed.
func CheckDelivered(tb testing.TB, fake *faketalkjs.Server, intents []outbox.Intent) {
	tb.Helper()
	wantMsgs := map[string][]string{} // conversation -> texts in order
	users := map[string]outbox.User{}
	for _, in := range intents {
		for _, u := range in.Users {
			users[u.ID] = u
		}
		c, ok := fake.Conversation(in.Conversation.ID)
		if !ok {
			tb.Fatalf("conversation %q missing", in.Conversation.ID)
		}
		if got, want := fmt.Sprint(c.Participants), fmt.Sprint(in.ResolvedParticipants()); got != want {
			tb.Errorf("conversation %q participants = %s, want %s", c.ID, got, want)
		}
		if c.Subject != in.Conversation.Subject {
			tb.Errorf("conversation %q subject = %q, want %q", c.ID, c.Subject, in.Conversation.Subject)
		}
		for _, m := range in.Messages {
			wantMsgs[in.Conversation.ID] = append(wantMsgs[in.Conversation.ID], m.Text)
		}
	}
	for id, u := range users {
		got, ok := fake.User(id)
		if !ok {
			tb.Fatalf("user %q missing", id)
		}
		if got.Name != u.Name || fmt.Sprint(got.Email) != fmt.Sprint(u.Email) {
			tb.Errorf("user %q = %+v, want name %q email %v", id, got, u.Name, u.Email)
		}
	}
	if got := fake.UserCount(); got != len(users) {
		tb.Errorf("fake holds %d users, want %d", got, len(users))
	}
	if got := fake.ConversationCount(); got != len(wantMsgs) {
		tb.Errorf("fake holds %d conversations, want %d", got, len(wantMsgs))
	}
	total := 0
	for conv, want := range wantMsgs {
		c, _ := fake.Conversation(conv)
		var got []string
		for _, m := range fake.Messages(conv) {
			got = append(got, m.Text)
			if m.StoredAt.Before(c.CreatedAt) {
				tb.Errorf("message %q stored before its conversation", m.Text)
			}
			if m.Sender != "" {
				u, ok := fake.User(m.Sender)
				if !ok || m.StoredAt.Before(u.CreatedAt) {
					tb.Errorf("message %q stored before its sender existed", m.Text)
				}
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			tb.Errorf("conversation %q messages =\n%q\nwant (each once, in intent order)\n%q", conv, got, want)
		}
		total += len(want)
	}
	if got := fake.MessageCount(); got != total {
		tb.Errorf("fake holds %d messages, want exactly %d", got, total)
	}
}

// SyncBuffer is a goroutine-safe log sink.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

// String returns everything written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// buildTimeout bounds BuildRelay's go build (a cold build cache on a loaded
// machine takes about a minute).
const buildTimeout = 10 * time.Minute

// BuildRelay builds cmd/outbox-relay (mainPkg is its path relative to the
// calling test's package) into a temporary directory, and returns the
// binary and a function that removes it.
func BuildRelay(mainPkg string) (binary string, remove func(), err error) {
	dir, err := os.MkdirTemp("", "outbox-relay-bin-")
	if err != nil {
		return "", nil, err
	}
	remove = func() { _ = os.RemoveAll(dir) }
	binary = filepath.Join(dir, "outbox-relay")
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", binary, mainPkg).CombinedOutput(); err != nil {
		remove()
		return "", nil, fmt.Errorf("build outbox-relay: %w\n%s", err, out)
	}
	return binary, remove, nil
}
