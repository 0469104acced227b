package relay

import (
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider"
)

// okProvider accepts every call without HTTP: the services' tests need a
// provider, not TalkJS.
type okProvider struct{ calls atomic.Int64 }

func (p *okProvider) PutUser(context.Context, provider.User) error { p.calls.Add(1); return nil }
func (p *okProvider) PutConversation(context.Context, provider.Conversation) error {
	p.calls.Add(1)
	return nil
}

func (p *okProvider) PostMessages(context.Context, string, []provider.Message) error {
	p.calls.Add(1)
	return nil
}

// newServiceRelay makes a relay on a database of its own, started by
// nobody: a service's test starts the services it needs.
func newServiceRelay(t *testing.T) (*Relay, *pgxpool.Pool) {
	t.Helper()
	pool, _ := pgtest.NewPool(t)
	r, err := New(pool, &okProvider{}, Config{Name: "svc-" + randomSuffix(), Lease: MinLease})
	if err != nil {
		t.Fatal(err)
	}
	return r, pool
}

// startService starts s, stopped when the test ends.
func startService(t *testing.T, s service) {
	t.Helper()
	if err := s.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(context.Background()); err != nil {
			t.Error(err)
		}
	})
}

// stopService stops s, and checks that a second Stop does nothing.
func stopService(t *testing.T, s service) {
	t.Helper()
	for range 2 {
		if err := s.Stop(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
}

// waitFor waits until cond holds, for at most timeout.
var waitFor = relaytest.WaitFor

// insertIntents inserts n intents of one conversation each.
func insertIntents(t *testing.T, pool *pgxpool.Pool, n int) {
	t.Helper()
	for i := range n {
		if _, err := pool.Exec(t.Context(), `INSERT INTO outbox.intents (payload) VALUES ($1::jsonb)`,
			testPayload(i)); err != nil {
			t.Fatal(err)
		}
	}
}

func testPayload(i int) string {
	u, c := fmt.Sprint("u", i), fmt.Sprint("c", i)
	b, _ := json.Marshal(outbox.Intent{
		Users:        []outbox.User{{ID: u, Name: "U", Email: []string{u + "@example.com"}}},
		Conversation: outbox.Conversation{ID: c},
		Messages:     []outbox.Message{{Sender: u, Text: "hi"}},
	})
	return string(b)
}

// countState counts intents in a state.
func countState(t *testing.T, pool *pgxpool.Pool, state string) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(t.Context(), `SELECT count(*) FROM outbox.intents WHERE state = $1`, state).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
