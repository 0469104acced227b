package outbox_test

import (
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

// fastPathDeclines are the valid cases outbox.payload_ok leaves to
// outbox.validate_payload (migrations/00014_payload_fast_path.sql), and why.
var fastPathDeclines = map[string]string{
	"100 users, participants and messages":           "more than 8 users and participants",
	"any sender when neither users nor participants": "a UserMessage with no members to bound its sender",
}

// judged is how both database functions see one payload.
type judged struct {
	ok    bool // outbox.payload_ok
	valid bool // outbox.validate_payload accepts it
}

// judge runs payloads through outbox.payload_ok and outbox.validate_payload
// in one query.
func judge(t *testing.T, db *pgx.Conn, payloads []string) []judged {
	t.Helper()
	rows, err := db.Query(t.Context(), `
SELECT outbox.payload_ok(p), pg_temp.payload_valid(p)
  FROM unnest($1::text[]) WITH ORDINALITY AS t(s, i), LATERAL (SELECT s::jsonb AS p) AS j
 ORDER BY i`, payloads)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (judged, error) {
		var j judged
		err := row.Scan(&j.ok, &j.valid)
		return j, err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(payloads) {
		t.Fatalf("judged %d payloads, sent %d", len(got), len(payloads))
	}
	return got
}

// The insert trigger's fast path never accepts what validate_payload
// refuses: it refuses every payload of the validation table, accepts the
// valid ones of common shape, and agrees on thousands of mutations of
// valid payloads (a refused one is then reported by validate_payload, with
// the messages TestInvalidPayloads checks).
func TestPayloadFastPathAgrees(t *testing.T) {
	t.Parallel()
	db, err := pgx.Connect(t.Context(), pgtest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close(t.Context()) })
	if _, err := db.Exec(t.Context(), `
CREATE FUNCTION pg_temp.payload_valid(p jsonb) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    RETURN outbox.validate_payload(p);
EXCEPTION WHEN check_violation THEN
    RETURN false;
END
$$`); err != nil {
		t.Fatal(err)
	}

	t.Run("invalid cases", func(t *testing.T) {
		var names, payloads []string
		for _, tc := range badCases() {
			if tc.payload != "" {
				names, payloads = append(names, tc.name), append(payloads, tc.payload)
			}
		}
		for i, j := range judge(t, db, payloads) {
			if j.ok || j.valid {
				t.Errorf("%s: payload_ok %v, validate_payload accepts %v; want both false", names[i], j.ok, j.valid)
			}
		}
	})

	t.Run("valid cases", func(t *testing.T) {
		var names, payloads []string
		for _, tc := range validCases() {
			names, payloads = append(names, tc.name), append(payloads, tc.payload)
		}
		names, payloads = append(names, "pgbench payload"), append(payloads, benchPayload)
		for i, j := range judge(t, db, payloads) {
			_, declines := fastPathDeclines[names[i]]
			if !j.valid || j.ok == declines {
				t.Errorf("%s: payload_ok %v, validate_payload accepts %v; want %v, true", names[i], j.ok, j.valid, !declines)
			}
		}
	})

	t.Run("mutations", func(t *testing.T) {
		var bases []any
		for _, tc := range validCases() {
			bases = append(bases, decodeJSON(t, tc.payload))
		}
		bases = append(bases, decodeJSON(t, benchPayload), decodeJSON(t, atTheLimits()))
		rng := rand.New(rand.NewPCG(13, 14))
		var payloads []string
		for range 6000 {
			p := deepCopy(bases[rng.IntN(len(bases))])
			for range 1 + rng.IntN(3) {
				p = mutate(rng, p)
			}
			b, err := json.Marshal(p)
			if err != nil {
				t.Fatal(err)
			}
			payloads = append(payloads, string(b))
		}
		var ok, declined, invalid int
		for i, j := range judge(t, db, payloads) {
			switch {
			case j.ok && !j.valid:
				t.Errorf("payload_ok accepts what validate_payload refuses:\n%s", payloads[i])
			case j.ok:
				ok++
			case j.valid:
				declined++
			default:
				invalid++
			}
		}
		t.Logf("%d mutations: %d accepted by both, %d left to validate_payload and valid, %d invalid", len(payloads), ok, declined, invalid)
		if ok < 500 || invalid < 2000 {
			t.Errorf("too few mutations accepted (%d) or refused (%d) to compare the two", ok, invalid)
		}
	})
}

// benchPayload is bench/pgbench/ours.sql's payload.
const benchPayload = `{"users":[{"id":"buyer-7","name":"Buyer 7","email":["buyer-7@example.com"],"custom":{"tier":"gold"}},{"id":"seller","name":"Seller","email":["seller@example.com"],"role":"seller"}],"conversation":{"id":"order-7","subject":"Order 7","custom":{"n":"7"}},"messages":[{"type":"SystemMessage","text":"intent 7 placed"},{"sender":"buyer-7","text":"hello 7"}]}`

// atTheLimits is a valid payload at payload_ok's own limits: 8 users and
// 8 participants, ids of 256 bytes of JSON text in all.
func atTheLimits() string {
	var users, parts []string
	for i := range 8 {
		users = append(users, fmt.Sprintf(`{"id": "user-%02d-%s", "name": "n", "email": ["e"]}`, i, strings.Repeat("x", 17)))
		parts = append(parts, fmt.Sprintf(`"user-%02d-%s"`, i, strings.Repeat("x", 17)))
	}
	return `{"users": [` + strings.Join(users, ", ") + `], "conversation": {"id": "c", "participants": [` +
		strings.Join(parts, ", ") + `]}, "messages": [{"sender": "user-07-` + strings.Repeat("x", 17) + `", "text": "t"}]}`
}

func decodeJSON(t *testing.T, s string) any {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

func deepCopy(v any) any {
	switch v := v.(type) {
	case map[string]any:
		c := make(map[string]any, len(v))
		for k, e := range v {
			c[k] = deepCopy(e)
		}
		return c
	case []any:
		c := make([]any, len(v))
		for i, e := range v {
			c[i] = deepCopy(e)
		}
		return c
	}
	return v
}

// replacements are the values a mutation may put anywhere.
var replacements = []any{
	nil, 1.0, true, "", "x", "u1", "a\x01b", "a\x7fb", "a\nb", strings.Repeat("y", 257), strings.Repeat("é", 256),
	[]any{}, []any{"x"}, []any{""}, []any{1.0}, map[string]any{}, map[string]any{"k": "v"}, map[string]any{"k": 1.0},
	"UserMessage", "SystemMessage", "Note",
}

// knownKeys are the payload's field names, so that a renamed or added key
// is often a real one in the wrong place.
var knownKeys = []string{"users", "conversation", "messages", "id", "subject", "participants", "custom",
	"name", "email", "photoUrl", "welcomeMessage", "role", "type", "sender", "text", "extra"}

// mutate changes one random node of v: replaces it, deletes or adds a
// member, renames a key, copies another string of the payload over a
// string (duplicate ids, foreign senders), or duplicates, drops or wraps
// an array element.
func mutate(rng *rand.Rand, v any) any {
	var nodes int
	var strs []string
	var walk func(x any)
	walk = func(x any) {
		nodes++
		switch y := x.(type) {
		case map[string]any:
			for _, e := range y {
				walk(e)
			}
		case []any:
			for _, e := range y {
				walk(e)
			}
		case string:
			strs = append(strs, y)
		}
	}
	walk(v)
	slices.Sort(strs)
	return mutateAt(rng, v, strs, rng.IntN(nodes))
}

// mutateAt changes the n-th node of v, counted depth first with object
// keys in order (so a seed always makes the same payloads), and returns
// the new v.
func mutateAt(rng *rand.Rand, v any, strs []string, n int) any {
	var seen int
	var visit func(x any) any
	visit = func(x any) any {
		if seen == n {
			seen++
			return change(rng, x, strs)
		}
		seen++
		switch y := x.(type) {
		case map[string]any:
			for _, k := range slices.Sorted(maps.Keys(y)) {
				y[k] = visit(y[k])
			}
		case []any:
			for i := range y {
				y[i] = visit(y[i])
			}
		}
		return x
	}
	return visit(v)
}

// change returns a changed x.
func change(rng *rand.Rand, x any, strs []string) any {
	switch y := x.(type) {
	case map[string]any:
		keys := slices.Sorted(maps.Keys(y))
		switch rng.IntN(3) {
		case 0:
			if len(keys) > 0 {
				delete(y, keys[rng.IntN(len(keys))])
				return y
			}
		case 1:
			if len(keys) > 0 {
				k := keys[rng.IntN(len(keys))]
				e := y[k]
				delete(y, k)
				y[knownKeys[rng.IntN(len(knownKeys))]] = e
				return y
			}
		}
		y[knownKeys[rng.IntN(len(knownKeys))]] = deepCopy(replacements[rng.IntN(len(replacements))])
		return y
	case []any:
		switch rng.IntN(3) {
		case 0:
			if len(y) > 0 {
				return append(y, deepCopy(y[rng.IntN(len(y))]))
			}
		case 1:
			if len(y) > 0 {
				i := rng.IntN(len(y))
				return append(y[:i:i], y[i+1:]...)
			}
		}
		if len(y) > 0 && rng.IntN(2) == 0 {
			i := rng.IntN(len(y))
			y[i] = []any{y[i]}
			return y
		}
		return append(y, deepCopy(replacements[rng.IntN(len(replacements))]))
	case string:
		if len(strs) > 0 && rng.IntN(2) == 0 {
			return strs[rng.IntN(len(strs))]
		}
	}
	if rng.IntN(4) == 0 {
		return []any{x}
	}
	return deepCopy(replacements[rng.IntN(len(replacements))])
}
