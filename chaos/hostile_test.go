package chaos_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
)

// hostileIDs are user and conversation ids that break naive URL building,
// logging or SQL. Each is at most 256 characters, the payload limit.
var hostileIDs = []string{
	"a/b", "/leading", "trailing/", "a/../b", "...", "a?b=c&d=e", "frag#ment", "100%", "%2F", "%", "%zz",
	"sp ace", " leading and trailing ", "+plus+", "semi;colon", `back\slash`, `quo"te`, "<tag>&amp;",
	"日本語の会話", "emoji 🎉👍🏽", "\u202eRTL override", "zero\u200bwidth", "e\u0301 combining",
	"x'); DROP TABLE outbox.intents; --", "1; DELETE FROM outbox.attempts", "$1", "' OR '1'='1",
	strings.Repeat("é", 256), strings.Repeat("z/", 128), strings.Repeat("?#%", 85),
}

// Fault 9, hostile input: ids that need escaping reach the API exactly
// (the fake sees the exact user and conversation ids, texts and custom
// values), and SQL in any payload field is only data.
func TestHostileIDsArriveExactly(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	seller := outbox.User{ID: "seller", Name: "Seller", Email: []string{"seller@example.com"}}
	var intents []outbox.Intent
	for i, id := range hostileIDs {
		intents = append(intents, outbox.Intent{
			Users: []outbox.User{{ID: id, Name: "name " + id, Email: []string{fmt.Sprintf("u%d@example.com", i)},
				PhotoURL: "https://example.com/p?id=" + id, Custom: map[string]string{id: id}}, seller},
			Conversation: outbox.Conversation{ID: id, Subject: "subject " + id, Custom: map[string]string{"k": id}},
			Messages: []outbox.Message{
				{Sender: id, Text: "hello " + id, Custom: map[string]string{"k": id}},
				{Type: outbox.SystemMessage, Text: strings.Repeat("long ✓ "+id+" ", 100)},
			},
		})
	}
	key := "k'); DROP TABLE outbox.intents; --"
	var keyed int64
	payload := `{"conversation":{"id":"keyed"},"messages":[{"type":"SystemMessage","text":"keyed"}]}`
	if err := b.pool.QueryRow(t.Context(), `INSERT INTO outbox.intents (key, payload) VALUES ($1, $2::jsonb) RETURNING id`,
		key, payload).Scan(&keyed); err != nil {
		t.Fatal(err)
	}
	insertChunks(t, b.pool, intents, 100)
	b.startRelay(t, nil, fastRetry("hostile-relay"), 5*time.Second)
	waitSettled(t, b.pool, time.Minute)

	intents = append(intents, outbox.Intent{Conversation: outbox.Conversation{ID: "keyed"},
		Messages: []outbox.Message{{Type: outbox.SystemMessage, Text: "keyed"}}})
	lost, dup := checkExactlyOnce(t, b, intents)
	for _, id := range hostileIDs {
		u, ok := b.fake.User(id)
		if !ok || u.Custom[id] != id || u.PhotoURL != "https://example.com/p?id="+id {
			t.Errorf("user %q arrived as %+v", id, u)
		}
		c, _ := b.fake.Conversation(id)
		if c.Custom["k"] != id {
			t.Errorf("conversation %q custom = %v", id, c.Custom)
		}
		msgs := b.fake.Messages(id)
		if len(msgs) != 2 || msgs[0].Sender != id || msgs[0].Custom["k"] != id {
			t.Errorf("conversation %q messages = %+v", id, msgs)
		}
	}
	st := b.fake.Stats()
	if st.Rejections != 0 || st.Routes[faketalkjs.RouteOther] != 0 {
		t.Errorf("the fake refused %d requests and saw %d on no route: an id was mangled", st.Rejections, st.Routes[faketalkjs.RouteOther])
	}
	var gotKey string
	if err := b.pool.QueryRow(t.Context(), `SELECT key FROM outbox.intents WHERE id = $1`, keyed).Scan(&gotKey); err != nil || gotKey != key {
		t.Errorf("key stored as %q (%v), want %q", gotKey, err, key)
	}
	for _, table := range []string{"outbox.intents", "outbox.attempts", "outbox.relays"} {
		if !tableExists(t, b.pool, table) {
			t.Errorf("%s is gone", table)
		}
	}
	t.Logf("figures: hostile_ids=%d delivered_exactly=%d api_rejections=%d lost=%d duplicates=%d",
		len(hostileIDs), len(hostileIDs), st.Rejections, lost, dup)
}

// Fault 9, hostile input: payloads that are oversized, deeply nested, of
// the wrong types or not JSON objects are refused at INSERT, with a
// message naming the rule and the field, and nothing is queued.
func TestHostilePayloadsRefusedAtInsert(t *testing.T) {
	t.Parallel()
	pool := setup(t, faketalkjs.Faults{}).pool
	nested := func(depth int) string {
		return strings.Repeat(`{"k":`, depth) + `"v"` + strings.Repeat(`}`, depth)
	}
	many := func(n int, item string) string {
		items := make([]string, n)
		for i := range items {
			items[i] = fmt.Sprintf(item, i)
		}
		return strings.Join(items, ",")
	}
	const ok = `"conversation":{"id":"c"}`
	tests := []struct {
		name    string
		payload string // nil SQL value when "NULL"
		want    string // in the error message; "" accepts any refusal
	}{
		{"oversized", `{` + ok + `,"messages":[{"type":"SystemMessage","text":"` + strings.Repeat("x", 300_000) + `"}]}`,
			"invalid intent payload: is 300"},
		{"oversized in many fields", `{` + ok + `,"messages":[` + many(100, `{"type":"SystemMessage","text":"`+strings.Repeat("y", 3000)+`%d"}`) + `]}`,
			"more than the limit of 262144"},
		{"nested custom", `{"conversation":{"id":"c","custom":` + nested(200) + `}}`, "invalid intent payload: conversation.custom.k: must be a string"},
		{"deeply nested", strings.Repeat("[", 100_000) + strings.Repeat("]", 100_000), ""},
		{"deeply nested object", `{` + ok + `,"messages":[{"type":"SystemMessage","text":"t","custom":` + nested(5000) + `}]}`,
			"messages[0].custom.k: must be a string"},
		{"not an object", `["conversation"]`, "invalid intent payload: must be a JSON object"},
		{"a string", `"conversation"`, "invalid intent payload: must be a JSON object"},
		{"json null", `null`, "invalid intent payload: must be a JSON object"},
		{"sql null", "NULL", ""},
		{"id a number", `{"conversation":{"id":123}}`, "invalid intent payload: conversation.id: must be a string"},
		{"id an object", `{"conversation":{"id":{"$ne":null}}}`, "invalid intent payload: conversation.id: must be a string"},
		{"conversation a string", `{"conversation":"c"}`, "invalid intent payload: conversation: must be an object"},
		{"users an object", `{` + ok + `,"users":{"id":"u"}}`, "invalid intent payload: users"},
		{"email a string", `{` + ok + `,"users":[{"id":"u","name":"n","email":"u@example.com"}]}`, "invalid intent payload: users[0].email"},
		{"text a number", `{` + ok + `,"messages":[{"type":"SystemMessage","text":42}]}`, "invalid intent payload: messages[0].text"},
		{"custom a number", `{"conversation":{"id":"c","custom":{"n":1}}}`, "invalid intent payload: conversation.custom.n: must be a string"},
		{"unknown field", `{"conversation":{"id":"c","participant":["u"]}}`, "invalid intent payload: conversation.participant: is not a known field"},
		{"injected field", `{"conversation":{"id":"c"},"'; DROP TABLE outbox.intents; --":1}`, "is not a known field"},
		{"control character", `{"conversation":{"id":"a\u0007b"}}`, "invalid intent payload: conversation.id: must not contain control characters"},
		{"NUL", `{"conversation":{"id":"a\u0000b"}}`, ""},
		{"id too long", `{"conversation":{"id":"` + strings.Repeat("é", 257) + `"}}`, "invalid intent payload: conversation.id: must be at most 256 characters"},
		{"too many users", `{` + ok + `,"users":[` + many(101, `{"id":"u%d","name":"n","email":["e"]}`) + `]}`, "invalid intent payload: users: must have at most 100 entries"},
		{"sender not a participant", `{"conversation":{"id":"c","participants":["a"]},"messages":[{"sender":"b","text":"t"}]}`, "invalid intent payload: messages[0].sender"},
		{"not json", `{"conversation":`, ""},
	}
	ctx := t.Context()
	for _, tt := range tests {
		var arg any = tt.payload
		if tt.payload == "NULL" {
			arg = nil
		}
		_, err := pool.Exec(ctx, `INSERT INTO outbox.intents (payload) VALUES ($1::jsonb)`, arg)
		if err == nil {
			t.Errorf("%s: accepted at INSERT", tt.name)
			continue
		}
		var pe *pgconn.PgError
		if !errors.As(err, &pe) {
			t.Errorf("%s: refused with a non-database error %v", tt.name, err)
			continue
		}
		if tt.want != "" {
			if pe.Code != "23514" || !strings.Contains(pe.Message, tt.want) {
				t.Errorf("%s: refused with %s %q, want check_violation containing %q", tt.name, pe.Code, pe.Message, tt.want)
			}
		}
		t.Logf("%-26s refused: %s %s", tt.name, pe.Code, truncateLog(pe.Message, 110))
	}
	if n := queryInt(t, pool, `SELECT count(*) FROM outbox.intents`); n != 0 {
		t.Errorf("%d intents queued from refused payloads", n)
	}
	t.Logf("figures: hostile_payloads=%d refused_at_insert=%d queued=0", len(tests), len(tests))
}

func truncateLog(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// cli runs the outbox-relay binary with args and env, failing the test if
// it does not exit within 20s.
func cli(t *testing.T, env []string, args ...string) (code int, stdout, stderr string, took time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = append(cleanEnv(), env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	start := time.Now()
	err := cmd.Run()
	took = time.Since(start)
	if ctx.Err() != nil {
		t.Fatalf("outbox-relay %q did not exit within 20s", args)
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatal(err)
	}
	return code, out.String(), errOut.String(), took
}

// cleanEnv is the test's environment without the relay's variables.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "OUTBOX_") && !strings.HasPrefix(kv, "TALKJS_") && !strings.HasPrefix(kv, "DATABASE_URL=") {
			env = append(env, kv)
		}
	}
	return env
}

// Fault 9, hostile input: SQL injection through the CLI's arguments and
// the relay's name is refused or stored as data; nothing else changes.
func TestSQLInjectionThroughCLIIsHarmless(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	ctx := t.Context()
	ids := insertChunks(t, b.pool, orderIntents("inject", 3, 3), 10)
	if _, err := b.pool.Exec(ctx, `UPDATE outbox.intents SET state = 'dead', last_error = 'test' WHERE id = ANY($1)`, ids[:2]); err != nil {
		t.Fatal(err)
	}
	env := []string{"DATABASE_URL=" + b.dbURL}
	attempts := [][]string{
		{"retry", "1; DROP TABLE outbox.intents"},
		{"retry", "1 OR 1=1"},
		{"retry", "1) OR (true"},
		{"retry", strconv.FormatInt(ids[0], 10) + "; UPDATE outbox.intents SET state = 'pending'"},
		{"retry", "99999999999999999999"},
		{"retry", "0x1"},
		{"retry", "-1"},
		{"retry", "--all-dead=1; DROP TABLE outbox.intents"},
		{"status", "--dead", "1; DROP TABLE outbox.intents"},
		{"status", "--dead", "-1"},
	}
	for _, args := range attempts {
		code, stdout, stderr, _ := cli(t, env, args...)
		if code != 2 {
			t.Errorf("outbox-relay %q exited %d, want 2 (usage)\nstdout: %s\nstderr: %s", args, code, stdout, stderr)
		}
	}
	// A legitimate retry touches exactly the intent named.
	code, stdout, stderr, _ := cli(t, env, "retry", strconv.FormatInt(ids[0], 10))
	if code != 0 || !strings.Contains(stdout, "retried 1 intent") {
		t.Errorf("retry %d exited %d: %s %s", ids[0], code, stdout, stderr)
	}
	// The relay's name is data too.
	name := "r'); DROP TABLE outbox.relays; --"
	p := startProc(t, name, b.relayEnv())
	waitUntil(t, 30*time.Second, "the relay's heartbeat under its exact name", func() bool {
		return queryInt(t, b.pool, `SELECT count(*) FROM outbox.relays WHERE id = $1`, name) == 1
	})
	waitUntil(t, 30*time.Second, "the pending intents to be delivered", func() bool {
		c := counts(t, b.pool)
		return c["pending"] == 0 && c["delivering"] == 0
	})
	p.kill()
	for _, table := range []string{"outbox.intents", "outbox.attempts", "outbox.relays"} {
		if !tableExists(t, b.pool, table) {
			t.Errorf("%s is gone", table)
		}
	}
	c := counts(t, b.pool)
	if c["dead"] != 1 || c["done"] != 2 {
		t.Errorf("states = %v, want the untouched intent still dead and the other two done", c)
	}
	if n := queryInt(t, b.pool, `SELECT count(*) FROM outbox.attempts WHERE relay = $1`, name); n == 0 {
		t.Errorf("no attempts recorded under the relay's exact name")
	}
	t.Logf("figures: injection_attempts=%d refused=%d tables_intact=3 intents_changed_by_injection=0", len(attempts)+1, len(attempts))
}

// Fault 9, hostile input: invalid configuration makes `outbox-relay run`
// exit at once with a message naming the variable, and never prints the
// secret key.
func TestInvalidConfigFailsFast(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	valid := map[string]string{"DATABASE_URL": b.dbURL, "TALKJS_APP_ID": appID, "TALKJS_SECRET_KEY": secret,
		"TALKJS_BASE_URL": b.api.URL(), "OUTBOX_HTTP_ADDR": "127.0.0.1:0"}
	tests := []struct{ variable, value string }{
		{"DATABASE_URL", ""},
		{"DATABASE_URL", "not a url ::"},
		{"DATABASE_URL", "postgres://postgres:hunter2@127.0.0.1:5432/db?sslmode=bogus"},
		{"TALKJS_APP_ID", ""},
		{"TALKJS_SECRET_KEY", ""},
		{"TALKJS_BASE_URL", "ftp://example.com"},
		{"TALKJS_TIMEOUT", "soon"},
		{"TALKJS_TIMEOUT", "0s"},
		{"OUTBOX_LEASE", "banana"},
		{"OUTBOX_LEASE", "10"},
		{"OUTBOX_CONCURRENCY", "-5"},
		{"OUTBOX_RATE_LIMIT", "-1"},
		{"OUTBOX_RATE_LIMIT", "lots"},
		{"OUTBOX_RETRY_MAX", "1ms"},
		{"OUTBOX_MAX_ATTEMPTS", "0"},
		{"OUTBOX_POLL_INTERVAL", "-1s"},
		{"OUTBOX_LOG_LEVEL", "loud"},
		{"OUTBOX_HTTP_ADDR", "not-an-address"},
	}
	var slowest time.Duration
	cases, named := 0, 0
	for _, tt := range tests {
		for _, command := range []string{"run", "migrate"} {
			if command == "migrate" && tt.variable != "DATABASE_URL" {
				continue // migrate reads only DATABASE_URL
			}
			t.Run(command+"/"+tt.variable+"="+tt.value, func(t *testing.T) {
				var env []string
				for k, v := range valid {
					if k != tt.variable {
						env = append(env, k+"="+v)
					}
				}
				if tt.value != "" {
					env = append(env, tt.variable+"="+tt.value)
				}
				code, _, stderr, took := cli(t, env, command)
				slowest = max(slowest, took)
				cases++
				if code != 0 && strings.Contains(stderr, tt.variable) {
					named++
				}
				if code == 0 || !strings.Contains(stderr, tt.variable) {
					t.Errorf("exit %d, stderr %q; want a failure naming %s", code, stderr, tt.variable)
				}
				if strings.Contains(stderr, secret) || strings.Contains(stderr, "hunter2") {
					t.Errorf("a secret was printed: %q", stderr)
				}
				if took > 10*time.Second {
					t.Errorf("took %s to fail", took)
				}
			})
		}
	}
	t.Logf("figures: invalid_configs=%d failed_naming_the_variable=%d slowest_exit=%s", cases, named, slowest.Round(time.Millisecond))
}
