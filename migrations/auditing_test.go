package migrations_test

import (
	"context"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

// auditRow is one result row, by column name.
type auditRow map[string]any

// auditChecks holds, for every query in docs/auditing.md (named by the
// comment line that opens it), what it must return on the seeded database.
// A query in the doc without a check, or a check without its query, fails
// the test: the page cannot grow an untested query or lose a tested one.
var auditChecks = map[string]func(t *testing.T, rows []auditRow){
	"The intent, by the key the application chose.": func(t *testing.T, rows []auditRow) {
		wantRows(t, rows, 1)
		want(t, rows[0], "state", "done")
		want(t, rows[0], "attempts", int32(2))
		want(t, rows[0], "calls", int64(4)) // u1 and u2 in one batch call
		want(t, rows[0], "failed_calls", int64(1))
		if l, ok := rows[0]["latency_s"].(float64); !ok || l < 2.9 || l > 3.1 {
			t.Errorf("latency_s = %v, want 3", rows[0]["latency_s"])
		}
	},
	"The intent, by its id.": func(t *testing.T, rows []auditRow) {
		wantRows(t, rows, 1)
		want(t, rows[0], "key", "order-123")
		want(t, rows[0], "calls", int64(4))
	},
	"Every call made for it, in order (rows sharing a call_id are one batch call).": func(t *testing.T, rows []auditRow) {
		wantColumn(t, rows, "outcome", "ok", "ok", "retryable", "skipped", "skipped", "ok", "ok")
		wantColumn(t, rows, "step", "user", "user", "conversation", "user", "user", "conversation", "messages")
	},
	"Which calls synced its users, and how each ended: one row per call.": func(t *testing.T, rows []auditRow) {
		wantColumn(t, rows, "users", "u1, u2")
		want(t, rows[0], "outcome", "ok")
		want(t, rows[0], "attempt", int32(1))
		if rows[0]["call_id"] == nil {
			t.Errorf("call_id is null, want the batch call's")
		}
	},
	"Every intent and user one batch call served.": func(t *testing.T, rows []auditRow) {
		wantColumn(t, rows, "user_id", "u1", "u2")
		want(t, rows[0], "intent_id", int64(1))
		want(t, rows[1], "status", int32(200))
	},
	"Every intent of a conversation and every call made for it.": func(t *testing.T, rows []auditRow) {
		wantRows(t, rows, 7)
		wantColumn(t, rows, "step", "user", "user", "conversation", "user", "user", "conversation", "messages")
	},
	"Every sync of a user: PUTs made, and PUTs skipped because TalkJS held the content.": func(t *testing.T, rows []auditRow) {
		wantColumn(t, rows, "outcome", "ok", "skipped")
		want(t, rows[0], "conversation_id", "order_123")
	},
	"Intents due for over a minute and not claimed, or held past their lease, and why.": func(t *testing.T, rows []auditRow) {
		wantColumn(t, rows, "key", "order-125", "order-125-update", "order-126")
		wantColumn(t, rows, "reason", "due but not claimed",
			"waiting for an earlier intent of its conversation", "lease expired")
		want(t, rows[1], "waits_for", int64(3))
	},
	"How far behind delivery is: the backlog and the age of the next deliverable intent.": func(t *testing.T, rows []auditRow) {
		wantRows(t, rows, 1)
		want(t, rows[0], "pending", int64(2))
		want(t, rows[0], "delivering", int64(1))
		want(t, rows[0], "next_id", int64(3))
		if l, ok := rows[0]["lag_s"].(float64); !ok || l < 600 {
			t.Errorf("lag_s = %v, want at least 600", rows[0]["lag_s"])
		}
	},
	"Dead letters of today, newest first, with the call that failed.": func(t *testing.T, rows []auditRow) {
		wantRows(t, rows, 1)
		want(t, rows[0], "key", "order-124")
		want(t, rows[0], "failed_step", "user")
		want(t, rows[0], "failed_status", int32(400))
	},
	"Failed calls in the last hour, by step and outcome.": func(t *testing.T, rows []auditRow) {
		wantColumn(t, rows, "step", "conversation", "user")
		wantColumn(t, rows, "outcome", "retryable", "permanent")
	},
	"Delivery latency percentiles (insert to done) over the last day, in seconds.": func(t *testing.T, rows []auditRow) {
		wantRows(t, rows, 1)
		want(t, rows[0], "delivered", int64(1))
		want(t, rows[0], "p50_s", float64(3))
	},
	"Calls per intent in the last hour: calls made (skips excluded, a batch call once) per intent they served.": func(t *testing.T, rows []auditRow) {
		wantRows(t, rows, 1)
		want(t, rows[0], "calls", int64(6))
		want(t, rows[0], "intents", int64(3))
		n, _ := rows[0]["calls_per_intent"].(pgtype.Numeric)
		if got, err := n.Value(); err != nil || got != "2.00" {
			t.Errorf("calls_per_intent = %v (%v), want 2.00", got, err)
		}
	},
	"Relays with a heartbeat in the last minute.": func(t *testing.T, rows []auditRow) {
		wantColumn(t, rows, "id", "relay-a")
	},
	"Who delivered what in the last hour (calls made, a batch call once).": func(t *testing.T, rows []auditRow) {
		wantColumn(t, rows, "relay", "relay-a")
		want(t, rows[0], "calls", int64(6))
	},
}

// auditSeed is a small history with one of everything the doc asks about.
// Ids are drawn in insert order from 1 in a fresh database:
//
//	1 order-123         done after a failed attempt (a 500 on the conversation);
//	                    its users synced by one batch call on attempt 1
//	2 order-124         dead: TalkJS refused user u3 (400)
//	3 order-125         pending, due ten minutes ago, not claimed
//	4 order-125-update  pending behind 3 in the same conversation
//	5 order-126         delivering, its lease expired a minute ago
var auditSeed = []string{
	`INSERT INTO outbox.intents (key, payload) VALUES
	 ('order-123', '{"users": [{"id": "u1", "name": "Alice", "email": ["alice@example.com"]},
	                           {"id": "u2", "name": "Bob", "email": ["bob@example.com"]}],
	                 "conversation": {"id": "order_123"},
	                 "messages": [{"sender": "u1", "text": "Hello!"}]}'),
	 ('order-124', '{"users": [{"id": "u3", "name": "Carol", "email": ["carol@example.com"]}],
	                 "conversation": {"id": "order_124"}}'),
	 ('order-125', '{"conversation": {"id": "order_125"}, "messages": [{"type": "SystemMessage", "text": "Placed"}]}'),
	 ('order-125-update', '{"conversation": {"id": "order_125"}, "messages": [{"type": "SystemMessage", "text": "Paid"}]}'),
	 ('order-126', '{"conversation": {"id": "order_126"}, "messages": [{"type": "SystemMessage", "text": "Placed"}]}')`,
	`UPDATE outbox.intents SET state = 'done', attempts = 2, created_at = now() - interval '1 hour',
	        done_at = now() - interval '1 hour' + interval '3 seconds' WHERE id = 1`,
	`UPDATE outbox.intents SET state = 'dead', attempts = 1, updated_at = now(),
	        last_error = 'attempt 1: user: permanent: status 400: PUT /v1/app/users/u3: response body "invalid email"'
	  WHERE id = 2`,
	`UPDATE outbox.intents SET created_at = now() - interval '10 minutes', run_after = now() - interval '10 minutes'
	  WHERE id IN (3, 4)`,
	`UPDATE outbox.intents SET state = 'delivering', attempts = 1, lease_owner = 'relay-b',
	        lease_expires_at = now() - interval '1 minute' WHERE id = 5`,
	`INSERT INTO outbox.attempts (intent_id, attempt, step, target, status, outcome, error, duration_ms, relay, started_at, call_id)
	 SELECT intent_id, attempt, step, target, status, outcome, error, duration_ms, 'relay-a', now() - n * interval '1 second',
	        CASE WHEN batch THEN '00000000-0000-4000-8000-000000000001'::uuid END
	   FROM (VALUES
	     (1, 1, 'user', 'u1', 200, 'ok', NULL, 12, 20, true),
	     (1, 1, 'user', 'u2', 200, 'ok', NULL, 12, 20, true),
	     (1, 1, 'conversation', 'order_123', 500, 'retryable', 'retryable: status 500', 30, 18, false),
	     (1, 2, 'user', 'u1', NULL, 'skipped', 'unchanged since last synchronised', 0, 10, false),
	     (1, 2, 'user', 'u2', NULL, 'skipped', 'unchanged since last synchronised', 0, 9, false),
	     (1, 2, 'conversation', 'order_123', 200, 'ok', NULL, 14, 8, false),
	     (1, 2, 'messages', 'order_123', 200, 'ok', NULL, 21, 7, false),
	     (2, 1, 'user', 'u3', 400, 'permanent', 'permanent: status 400: invalid email', 9, 5, false),
	     (5, 1, 'user', 'u9', 200, 'ok', NULL, 10, 65, false)
	   ) AS a(intent_id, attempt, step, target, status, outcome, error, duration_ms, n, batch)`,
	`INSERT INTO outbox.relays (id, started_at, heartbeat_at, version) VALUES
	 ('relay-a', now() - interval '1 hour', now(), 'v1.0.0'),
	 ('relay-b', now() - interval '2 hours', now() - interval '5 minutes', 'v1.0.0')`,
}

// TestAuditingDocQueries runs every SQL statement of docs/auditing.md
// against a seeded database and checks what each returns.
func TestAuditingDocQueries(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	pool, _ := pgtest.NewPool(t)
	for _, stmt := range auditSeed {
		if _, err := pool.Exec(ctx, stmt); err != nil {
			t.Fatalf("seed: %v\n%s", err, stmt)
		}
	}
	doc, err := os.ReadFile("../docs/auditing.md")
	if err != nil {
		t.Fatal(err)
	}
	queries := docQueries(t, string(doc))
	if len(queries) < len(auditChecks) {
		t.Errorf("docs/auditing.md has %d queries, the test checks %d", len(queries), len(auditChecks))
	}
	seen := map[string]bool{}
	for _, q := range queries {
		check, ok := auditChecks[q.title]
		if !ok {
			t.Errorf("docs/auditing.md: query %q has no check in this test", q.title)
			continue
		}
		seen[q.title] = true
		t.Run(q.title, func(t *testing.T) {
			check(t, runAudit(ctx, t, pool, q.sql))
		})
	}
	for title := range auditChecks {
		if !seen[title] {
			t.Errorf("check %q: no such query in docs/auditing.md", title)
		}
	}
}

type docQuery struct{ title, sql string }

var sqlBlock = regexp.MustCompile("(?s)```sql\n(.*?)```")

// docQueries splits the doc's SQL blocks into statements, each named by
// the comment line that opens it.
func docQueries(t *testing.T, doc string) []docQuery {
	t.Helper()
	var out []docQuery
	for _, m := range sqlBlock.FindAllStringSubmatch(doc, -1) {
		for _, stmt := range strings.Split(m[1], ";\n") {
			stmt = strings.TrimSpace(stmt)
			if stmt == "" {
				continue
			}
			first, _, _ := strings.Cut(stmt, "\n")
			title, ok := strings.CutPrefix(first, "-- ")
			if !ok {
				t.Errorf("docs/auditing.md: a query does not open with a comment naming it:\n%s", stmt)
				continue
			}
			out = append(out, docQuery{title: title, sql: stmt})
		}
	}
	return out
}

func runAudit(ctx context.Context, t *testing.T, pool *pgxpool.Pool, sql string) []auditRow {
	t.Helper()
	rows, err := pool.Query(ctx, sql)
	if err != nil {
		t.Fatalf("%v\n%s", err, sql)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (auditRow, error) {
		vals, err := row.Values()
		if err != nil {
			return nil, err
		}
		r := auditRow{}
		for i, f := range row.FieldDescriptions() {
			r[f.Name] = vals[i]
		}
		return r, nil
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, sql)
	}
	return out
}

func wantRows(t *testing.T, rows []auditRow, n int) {
	t.Helper()
	if len(rows) != n {
		t.Fatalf("got %d rows, want %d: %v", len(rows), n, rows)
	}
}

func want(t *testing.T, row auditRow, col string, v any) {
	t.Helper()
	if got, ok := row[col]; !ok {
		t.Errorf("no column %q in %v", col, row)
	} else if got != v {
		t.Errorf("%s = %#v, want %#v", col, got, v)
	}
}

func wantColumn(t *testing.T, rows []auditRow, col string, vals ...any) {
	t.Helper()
	wantRows(t, rows, len(vals))
	for i, v := range vals {
		if got := rows[i][col]; got != v {
			t.Errorf("row %d: %s = %#v, want %#v", i, col, got, v)
		}
	}
}
