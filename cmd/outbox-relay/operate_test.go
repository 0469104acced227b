package main

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

// operateFixture is a database with intents in every state:
//
//	1 k-done     done, with two calls
//	2 k-dead-400 dead two hours ago: status 400
//	3 k-dead-500 dead now: retry budget spent on 500s
//	4 k-pending  pending, first of conversation c4
//	5 k-next     pending, behind 4 in conversation c4
//	6 k-busy     delivering
//	7 k-dead-old dead forty days ago
type operateFixture struct {
	pool *pgxpool.Pool
	env  map[string]string
}

func newOperateFixture(t *testing.T) operateFixture {
	t.Helper()
	dbURL := pgtest.NewDatabase(t)
	pool := pgtest.Pool(t, dbURL)
	for _, stmt := range []string{
		`INSERT INTO outbox.intents (key, payload) VALUES
		 ('k-done', '{"conversation": {"id": "c1"}}'),
		 ('k-dead-400', '{"conversation": {"id": "c2"}}'),
		 ('k-dead-500', '{"conversation": {"id": "c3"}}'),
		 ('k-pending', '{"conversation": {"id": "c4"}}'),
		 ('k-next', '{"conversation": {"id": "c4"}}'),
		 ('k-busy', '{"conversation": {"id": "c6"}}'),
		 ('k-dead-old', '{"conversation": {"id": "c7"}}')`,
		`UPDATE outbox.intents SET state = 'done', done_at = now(), attempts = 1 WHERE id = 1`,
		`UPDATE outbox.intents SET state = 'dead', attempts = 1, updated_at = now() - interval '2 hours',
		        last_error = 'attempt 1: user: permanent: status 400: bad email' WHERE id = 2`,
		`UPDATE outbox.intents SET state = 'dead', attempts = 25,
		        last_error = 'retry budget spent (25 attempts): status 500' WHERE id = 3`,
		`UPDATE outbox.intents SET created_at = now() - interval '5 minutes', run_after = now() - interval '5 minutes'
		  WHERE id IN (4, 5)`,
		`UPDATE outbox.intents SET state = 'delivering', attempts = 1, lease_owner = 'r1',
		        lease_expires_at = now() + interval '1 hour' WHERE id = 6`,
		`UPDATE outbox.intents SET state = 'dead', attempts = 3, updated_at = now() - interval '40 days',
		        last_error = 'attempt 3: conversation: permanent: status 404' WHERE id = 7`,
		`INSERT INTO outbox.attempts (intent_id, attempt, step, target, status, outcome, error, duration_ms, relay, started_at, call_id) VALUES
		 (1, 1, 'conversation', 'c1', 200, 'ok', NULL, 12.5, 'r1', now() - interval '2 seconds', NULL),
		 (1, 1, 'messages', 'c1', 200, 'ok', NULL, 20, 'r1', now() - interval '1 second', NULL),
		 (2, 1, 'user', 'u1', 400, 'permanent', 'bad email', 9, 'r1', now() - interval '30 minutes', '5f0c3a1e-0000-4000-8000-000000000001'),
		 (7, 3, 'conversation', 'c7', 404, 'permanent', 'not found', 9, 'r1', now() - interval '40 days', NULL)`,
		`INSERT INTO outbox.relays (id, version) VALUES ('r1', 'v1.2.3')`,
	} {
		if _, err := pool.Exec(t.Context(), stmt); err != nil {
			t.Fatalf("%v\n%s", err, stmt)
		}
	}
	return operateFixture{pool: pool, env: map[string]string{"DATABASE_URL": dbURL}}
}

// states returns every intent's state by id.
func (f operateFixture) states(t *testing.T) map[int64]string {
	t.Helper()
	rows, err := f.pool.Query(t.Context(), `SELECT id, state FROM outbox.intents`)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int64]string{}
	var id int64
	var state string
	if _, err := pgx.ForEachRow(rows, []any{&id, &state}, func() error { out[id] = state; return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

func (f operateFixture) cli(t *testing.T, wantCode int, args ...string) string {
	t.Helper()
	code, stdout, stderr := runCLI(t, f.env, args...)
	if code != wantCode {
		t.Fatalf("%q exited %d, want %d\nstdout: %s\nstderr: %s", args, code, wantCode, stdout, stderr)
	}
	return stdout
}

type actionDoc struct {
	DryRun   bool              `json:"dry_run"`
	Changed  []int64           `json:"changed"`
	Skipped  map[string]string `json:"skipped"`
	NotFound []int64           `json:"not_found"`
}

func (f operateFixture) action(t *testing.T, wantCode int, args ...string) actionDoc {
	t.Helper()
	out := f.cli(t, wantCode, append(args, "--json")...)
	var doc actionDoc
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("%q: %v\n%s", args, err, out)
	}
	return doc
}

func TestStatusJSON(t *testing.T) {
	t.Parallel()
	f := newOperateFixture(t)
	var doc struct {
		Counts         map[string]int64 `json:"counts"`
		LagS           float64          `json:"lag_s"`
		OldestPendingS float64          `json:"oldest_pending_s"`
		Failed         []struct {
			Step, Outcome string
			Calls         int64
		} `json:"failed_calls_last_hour"`
		Relays []struct{ ID, Version string } `json:"relays"`
		Dead   []struct {
			ID        int64   `json:"id"`
			Key       *string `json:"key"`
			LastError *string `json:"last_error"`
		} `json:"dead"`
	}
	out := f.cli(t, 0, "status", "--json", "--dead", "2")
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	want := map[string]int64{"pending": 2, "delivering": 1, "done": 1, "dead": 3}
	for state, n := range want {
		if doc.Counts[state] != n {
			t.Errorf("counts[%s] = %d, want %d (%v)", state, doc.Counts[state], n, doc.Counts)
		}
	}
	if doc.LagS < 290 || doc.OldestPendingS < 290 {
		t.Errorf("lag_s = %g, oldest_pending_s = %g, want about 300", doc.LagS, doc.OldestPendingS)
	}
	if len(doc.Failed) != 1 || doc.Failed[0].Step != "user" || doc.Failed[0].Outcome != "permanent" || doc.Failed[0].Calls != 1 {
		t.Errorf("failed calls in the last hour = %+v, want one permanent user call", doc.Failed)
	}
	if len(doc.Relays) != 1 || doc.Relays[0].Version != "v1.2.3" {
		t.Errorf("relays = %+v", doc.Relays)
	}
	if len(doc.Dead) != 2 || doc.Dead[0].ID != 3 || *doc.Dead[0].Key != "k-dead-500" {
		t.Errorf("dead = %+v, want the two most recent, newest first", doc.Dead)
	}
}

func TestInspect(t *testing.T) {
	t.Parallel()
	f := newOperateFixture(t)
	var doc struct {
		ID      int64           `json:"id"`
		Key     string          `json:"key"`
		State   string          `json:"state"`
		Payload json.RawMessage `json:"payload"`
		Calls   []struct {
			Step      string  `json:"step"`
			Status    int     `json:"status"`
			DurationS float64 `json:"duration_s"`
			CallID    *string `json:"call_id"`
		} `json:"calls"`
	}
	for _, args := range [][]string{{"inspect", "1", "--json"}, {"inspect", "--key", "k-done", "--json"}} {
		out := f.cli(t, 0, args...)
		if err := json.Unmarshal([]byte(out), &doc); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if doc.ID != 1 || doc.Key != "k-done" || doc.State != "done" || !strings.Contains(string(doc.Payload), `"c1"`) {
			t.Errorf("%q: %+v", args, doc)
		}
		if len(doc.Calls) != 2 || doc.Calls[0].Step != "conversation" || doc.Calls[1].Step != "messages" ||
			doc.Calls[0].DurationS != 0.0125 || doc.Calls[0].CallID != nil {
			t.Errorf("%q: calls = %+v, want conversation then messages, in seconds", args, doc.Calls)
		}
	}
	out := f.cli(t, 0, "inspect", "2")
	// Intent 2's user call was a batch call: its id, shortened.
	for _, want := range []string{"k-dead-400", "dead", "bad email", "STEP", "permanent", "BATCH CALL", "5f0c3a1e"} {
		if !strings.Contains(out, want) {
			t.Errorf("inspect 2 lacks %q:\n%s", want, out)
		}
	}
	f.cli(t, 3, "inspect", "999")
	f.cli(t, 3, "inspect", "--key", "no-such-key")
	f.cli(t, 2, "inspect")
	f.cli(t, 2, "inspect", "1", "--key", "k-done")
}

// Each command's dry run lists what it would change and changes nothing;
// the same command without it changes exactly that.
func TestRetryCancelPurgeDryRun(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		args []string
		want []int64
		to   string // the changed intents' new state; "" for deleted
	}{
		{"retry all dead", []string{"retry", "--all-dead"}, []int64{2, 3, 7}, "pending"},
		{"retry by error", []string{"retry", "--error-like", "%status 400%"}, []int64{2}, "pending"},
		{"retry since", []string{"retry", "--since", "1h"}, []int64{3}, "pending"},
		{"retry limit", []string{"retry", "--all-dead", "--limit", "2"}, []int64{2, 3}, "pending"},
		{"retry by key", []string{"retry", "--key", "k-dead-old"}, []int64{7}, "pending"},
		{"cancel", []string{"cancel", "4", "6", "1"}, []int64{4}, "dead"},
		{"cancel by key", []string{"cancel", "--key", "k-next"}, []int64{5}, "dead"},
		{"purge", []string{"purge", "--dead", "--older-than", "720h"}, []int64{7}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newOperateFixture(t)
			before := f.states(t)
			dry := f.action(t, 0, append(tc.args, "--dry-run")...)
			if !dry.DryRun || !slices.Equal(dry.Changed, tc.want) {
				t.Errorf("dry run listed %v, want %v", dry.Changed, tc.want)
			}
			if after := f.states(t); !mapsEqual(before, after) {
				t.Fatalf("dry run changed states: %v -> %v", before, after)
			}
			done := f.action(t, 0, tc.args...)
			if done.DryRun || !slices.Equal(done.Changed, dry.Changed) {
				t.Errorf("changed %v, the dry run listed %v", done.Changed, dry.Changed)
			}
			after := f.states(t)
			for id, state := range before {
				switch {
				case !slices.Contains(tc.want, id) && after[id] != state:
					t.Errorf("intent %d went %s -> %s; it was not listed", id, state, after[id])
				case slices.Contains(tc.want, id) && tc.to == "":
					if _, ok := after[id]; ok {
						t.Errorf("intent %d still exists", id)
					}
				case slices.Contains(tc.want, id) && after[id] != tc.to:
					t.Errorf("intent %d is %s, want %s", id, after[id], tc.to)
				}
			}
		})
	}
}

func TestCancelLetsTheNextIntentGo(t *testing.T) {
	t.Parallel()
	f := newOperateFixture(t)
	ctx := t.Context()
	var next int64
	if err := f.pool.QueryRow(ctx, `SELECT next_id FROM outbox.lag`).Scan(&next); err != nil || next != 4 {
		t.Fatalf("next deliverable = %d (%v), want 4", next, err)
	}
	out := f.cli(t, 0, "cancel", "4", "6", "1")
	for _, want := range []string{"cancelled 1 intent(s): 4", "intent 1 is done: left alone", "intent 6 is delivering: left alone"} {
		if !strings.Contains(out, want) {
			t.Errorf("cancel output lacks %q:\n%s", want, out)
		}
	}
	var reason string
	if err := f.pool.QueryRow(ctx, `SELECT last_error FROM outbox.intents WHERE id = 4`).Scan(&reason); err != nil || reason != "cancelled by operator" {
		t.Errorf("last_error = %q (%v)", reason, err)
	}
	if err := f.pool.QueryRow(ctx, `SELECT next_id FROM outbox.lag`).Scan(&next); err != nil || next != 5 {
		t.Errorf("after cancelling 4, next deliverable = %d (%v), want 5", next, err)
	}
	var calls int
	if err := f.pool.QueryRow(ctx, `SELECT count(*) FROM outbox.attempts WHERE intent_id = 7`).Scan(&calls); err != nil {
		t.Fatal(err)
	}
	f.cli(t, 0, "purge", "--dead", "--older-than", "720h")
	if err := f.pool.QueryRow(ctx, `SELECT count(*) FROM outbox.attempts WHERE intent_id = 7`).Scan(&calls); err != nil || calls != 0 {
		t.Errorf("purged intent keeps %d calls (%v)", calls, err)
	}
	// The purged intent's key stays taken, as after retention.
	_, err := f.pool.Exec(ctx, `INSERT INTO outbox.intents (key, payload) VALUES ('k-dead-old', '{"conversation": {"id": "c7"}}')`)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "23505" || pgErr.ConstraintName != "intents_key_key" {
		t.Errorf("insert with a purged intent's key: %v, want 23505 on intents_key_key", err)
	}
	f.cli(t, 3, "cancel", "4242")
}

func TestOperatorArguments(t *testing.T) {
	t.Parallel()
	env := map[string]string{"DATABASE_URL": "postgres://postgres@127.0.0.1:1/none"}
	for _, args := range [][]string{
		{"cancel"},
		{"cancel", "x"},
		{"cancel", "1", "--key", "k"},
		{"retry", "--since", "yesterday"},
		{"retry", "--all-dead", "--limit", "-1"},
		{"retry", "--key", "k", "--all-dead"},
		{"purge"},
		{"purge", "--dead"},
		{"purge", "--older-than", "1h"},
		{"purge", "--dead", "--older-than", "-1h"},
		{"inspect", "1", "2"},
	} {
		if code, _, stderr := runCLI(t, env, args...); code != 2 {
			t.Errorf("%q exited %d (%s), want 2", args, code, stderr)
		}
	}
}

func mapsEqual(a, b map[int64]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
