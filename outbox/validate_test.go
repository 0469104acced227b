package outbox_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/outbox"
)

// badCase is a payload both Go and the database must refuse, naming field.
type badCase struct {
	name string
	// payload is the JSON an application would insert.
	payload string
	// sqlOnly marks payloads the Go types cannot express (wrong JSON types,
	// unknown keys); the others are decoded into an outbox.Intent and must
	// fail Validate with the database's message.
	sqlOnly bool
	// intent is set instead of payload for what only Go can see (NUL,
	// invalid UTF-8: Postgres JSON cannot hold them).
	intent *outbox.Intent
	field  string
	rule   string
}

// conv wraps a conversation object (and optional extra top-level members)
// into a payload.
func conv(c string, extra ...string) string {
	return `{"conversation": ` + c + strings.Join(append([]string{""}, extra...), ", ") + `}`
}

func repeatJSON(n int, format string) string {
	parts := make([]string, n)
	for i := range parts {
		parts[i] = fmt.Sprintf(format, i)
	}
	return strings.Join(parts, ", ")
}

func badCases() []badCase {
	long := strings.Repeat("x", 257)
	return []badCase{
		// Size first.
		{name: "oversize payload",
			payload: conv(`{"id": "c"}`, `"messages": [{"sender": "u", "text": "`+strings.Repeat("x", outbox.MaxPayloadBytes)+`"}]`),
			field:   "", rule: "is 262216 bytes as JSON text, more than the limit of 262144"},

		// The payload's shape.
		{name: "payload is an array", payload: `[]`, sqlOnly: true, field: "", rule: "must be a JSON object"},
		{name: "payload is a string", payload: `"x"`, sqlOnly: true, field: "", rule: "must be a JSON object"},
		{name: "unknown top-level key", payload: conv(`{"id": "c"}`, `"participant": ["u1"]`), sqlOnly: true,
			field: "participant", rule: "is not a known field (expected users, conversation, messages)"},

		// conversation
		{name: "conversation missing", payload: `{"users": []}`, sqlOnly: true, field: "conversation", rule: "is required"},
		{name: "conversation null", payload: `{"conversation": null}`, sqlOnly: true, field: "conversation", rule: "is required"},
		{name: "conversation not an object", payload: `{"conversation": "c"}`, sqlOnly: true, field: "conversation", rule: "must be an object"},
		{name: "conversation unknown key", payload: conv(`{"id": "c", "participant": ["u1"]}`), sqlOnly: true,
			field: "conversation.participant", rule: "is not a known field (expected id, subject, participants, custom)"},
		{name: "conversation.id missing", payload: conv(`{"subject": "s"}`), field: "conversation.id", rule: "is required"},
		{name: "conversation.id empty", payload: conv(`{"id": ""}`), field: "conversation.id", rule: "is required"},
		{name: "conversation.id null", payload: conv(`{"id": null}`), sqlOnly: true, field: "conversation.id", rule: "is required"},
		{name: "conversation.id number", payload: conv(`{"id": 123}`), sqlOnly: true, field: "conversation.id", rule: "must be a string"},
		{name: "conversation.id too long", payload: conv(`{"id": "` + long + `"}`), field: "conversation.id", rule: "must be at most 256 characters"},
		{name: "conversation.id control character", payload: conv(`{"id": "a\nb"}`), field: "conversation.id", rule: "must not contain control characters"},
		{name: "conversation.id DEL", payload: conv(`{"id": "a\u007fb"}`), field: "conversation.id", rule: "must not contain control characters"},
		{name: "subject number", payload: conv(`{"id": "c", "subject": 1}`), sqlOnly: true, field: "conversation.subject", rule: "must be a string"},
		{name: "conversation custom not an object", payload: conv(`{"id": "c", "custom": ["a"]}`), sqlOnly: true,
			field: "conversation.custom", rule: "must be an object"},
		{name: "conversation custom nested object", payload: conv(`{"id": "c", "custom": {"a": "b", "k": {"x": "y"}}}`), sqlOnly: true,
			field: "conversation.custom.k", rule: "must be a string"},
		{name: "conversation custom array value", payload: conv(`{"id": "c", "custom": {"k": ["x"]}}`), sqlOnly: true,
			field: "conversation.custom.k", rule: "must be a string"},
		{name: "conversation custom empty array value", payload: conv(`{"id": "c", "custom": {"k": []}}`), sqlOnly: true,
			field: "conversation.custom.k", rule: "must be a string"},
		{name: "conversation custom null value", payload: conv(`{"id": "c", "custom": {"k": null}}`), sqlOnly: true,
			field: "conversation.custom.k", rule: "must be a string"},
		{name: "custom is checked before participants", payload: conv(`{"id": "c", "participants": [""], "custom": {"k": 1}}`), sqlOnly: true,
			field: "conversation.custom.k", rule: "must be a string"},
		{name: "participants not an array", payload: conv(`{"id": "c", "participants": "u1"}`), sqlOnly: true,
			field: "conversation.participants", rule: "must be a non-empty array of strings"},
		{name: "participants empty", payload: conv(`{"id": "c", "participants": []}`), sqlOnly: true,
			field: "conversation.participants", rule: "must be a non-empty array of strings"},
		{name: "too many participants", payload: conv(`{"id": "c", "participants": [` + repeatJSON(101, `"u%d"`) + `]}`),
			field: "conversation.participants", rule: "must have at most 100 entries"},
		{name: "participant number", payload: conv(`{"id": "c", "participants": ["u1", 2]}`), sqlOnly: true,
			field: "conversation.participants[1]", rule: "must be a string"},
		{name: "participant empty", payload: conv(`{"id": "c", "participants": ["u1", ""]}`),
			field: "conversation.participants[1]", rule: "must not be empty"},
		{name: "participant too long", payload: conv(`{"id": "c", "participants": ["` + long + `"]}`),
			field: "conversation.participants[0]", rule: "must be at most 256 characters"},
		{name: "participant control character", payload: conv(`{"id": "c", "participants": ["u\t1"]}`),
			field: "conversation.participants[0]", rule: "must not contain control characters"},
		{name: "duplicate participants", payload: conv(`{"id": "c", "participants": ["a", "b", "a"]}`),
			field: "conversation.participants[2]", rule: "duplicates conversation.participants[0]"},

		// users
		{name: "users not an array", payload: conv(`{"id": "c"}`, `"users": {"id": "u1"}`), sqlOnly: true, field: "users", rule: "must be an array"},
		{name: "too many users", payload: conv(`{"id": "c"}`, `"users": [`+repeatJSON(101, `{"id": "u%d", "name": "n", "email": ["e"]}`)+`]`),
			field: "users", rule: "must have at most 100 entries"},
		{name: "user not an object", payload: conv(`{"id": "c"}`, `"users": ["u1"]`), sqlOnly: true, field: "users[0]", rule: "must be an object"},
		{name: "user unknown key", payload: conv(`{"id": "c"}`, `"users": [{"id": "u1", "name": "n", "mail": ["e"]}]`), sqlOnly: true,
			field: "users[0].mail", rule: "is not a known field (expected id, name, email, photoUrl, welcomeMessage, role, custom)"},
		{name: "user missing id", payload: conv(`{"id": "c"}`, `"users": [{"name": "n", "email": ["e"]}]`), field: "users[0].id", rule: "is required"},
		{name: "user id number", payload: conv(`{"id": "c"}`, `"users": [{"id": 1, "name": "n", "email": ["e"]}]`), sqlOnly: true,
			field: "users[0].id", rule: "must be a string"},
		{name: "user id too long", payload: conv(`{"id": "c"}`, `"users": [{"id": "`+long+`", "name": "n", "email": ["e"]}]`),
			field: "users[0].id", rule: "must be at most 256 characters"},
		{name: "user id control character", payload: conv(`{"id": "c"}`, `"users": [{"id": "u\u00011", "name": "n", "email": ["e"]}]`),
			field: "users[0].id", rule: "must not contain control characters"},
		{name: "user missing name", payload: conv(`{"id": "c"}`, `"users": [{"id": "u1", "email": ["e"]}]`), field: "users[0].name", rule: "is required"},
		{name: "user empty name", payload: conv(`{"id": "c"}`, `"users": [{"id": "u1", "name": "", "email": ["e"]}]`), field: "users[0].name", rule: "is required"},
		{name: "user name number", payload: conv(`{"id": "c"}`, `"users": [{"id": "u1", "name": 7, "email": ["e"]}]`), sqlOnly: true,
			field: "users[0].name", rule: "must be a string"},
		{name: "user missing email", payload: conv(`{"id": "c"}`, `"users": [{"id": "u1", "name": "n"}]`), field: "users[0].email", rule: "is required"},
		{name: "user email empty", payload: conv(`{"id": "c"}`, `"users": [{"id": "u1", "name": "n", "email": ["e"]}, {"id": "u2", "name": "n", "email": []}]`),
			field: "users[1].email", rule: "must be a non-empty array of strings"},
		{name: "user email a string", payload: conv(`{"id": "c"}`, `"users": [{"id": "u1", "name": "n", "email": "e"}]`), sqlOnly: true,
			field: "users[0].email", rule: "must be a non-empty array of strings"},
		{name: "user email element empty", payload: conv(`{"id": "c"}`, `"users": [{"id": "u1", "name": "n", "email": ["e", ""]}]`),
			field: "users[0].email[1]", rule: "must not be empty"},
		{name: "user email element number", payload: conv(`{"id": "c"}`, `"users": [{"id": "u1", "name": "n", "email": [1]}]`), sqlOnly: true,
			field: "users[0].email[0]", rule: "must be a string"},
		{name: "user photoUrl number", payload: conv(`{"id": "c"}`, `"users": [{"id": "u1", "name": "n", "email": ["e"], "photoUrl": 1}]`), sqlOnly: true,
			field: "users[0].photoUrl", rule: "must be a string"},
		{name: "user welcomeMessage object", payload: conv(`{"id": "c"}`, `"users": [{"id": "u1", "name": "n", "email": ["e"], "welcomeMessage": {}}]`), sqlOnly: true,
			field: "users[0].welcomeMessage", rule: "must be a string"},
		{name: "user role boolean", payload: conv(`{"id": "c"}`, `"users": [{"id": "u1", "name": "n", "email": ["e"], "role": true}]`), sqlOnly: true,
			field: "users[0].role", rule: "must be a string"},
		{name: "user custom number value", payload: conv(`{"id": "c"}`, `"users": [{"id": "u1", "name": "n", "email": ["e"], "custom": {"tier": 1}}]`), sqlOnly: true,
			field: "users[0].custom.tier", rule: "must be a string"},
		{name: "duplicate user ids", payload: conv(`{"id": "c"}`, `"users": [{"id": "u1", "name": "n", "email": ["e"]}, {"id": "u1", "name": "m", "email": ["f"]}]`),
			field: "users[1].id", rule: "duplicates users[0].id"},

		// messages
		{name: "messages not an array", payload: conv(`{"id": "c"}`, `"messages": {"text": "t"}`), sqlOnly: true, field: "messages", rule: "must be an array"},
		{name: "too many messages", payload: conv(`{"id": "c"}`, `"messages": [`+repeatJSON(101, `{"sender": "u", "text": "m%d"}`)+`]`),
			field: "messages", rule: "must have at most 100 entries"},
		{name: "message not an object", payload: conv(`{"id": "c"}`, `"messages": ["hi"]`), sqlOnly: true, field: "messages[0]", rule: "must be an object"},
		{name: "message unknown key", payload: conv(`{"id": "c"}`, `"messages": [{"from": "u", "text": "t"}]`), sqlOnly: true,
			field: "messages[0].from", rule: "is not a known field (expected type, sender, text, custom)"},
		{name: "message unknown type", payload: conv(`{"id": "c"}`, `"messages": [{"type": "Note", "text": "t"}]`),
			field: "messages[0].type", rule: `must be "UserMessage" or "SystemMessage"`},
		{name: "message type number", payload: conv(`{"id": "c"}`, `"messages": [{"type": 1, "text": "t"}]`), sqlOnly: true,
			field: "messages[0].type", rule: `must be "UserMessage" or "SystemMessage"`},
		{name: "UserMessage without sender", payload: conv(`{"id": "c"}`, `"messages": [{"text": "t"}]`),
			field: "messages[0].sender", rule: "is required for a UserMessage"},
		{name: "explicit UserMessage without sender", payload: conv(`{"id": "c"}`, `"messages": [{"type": "UserMessage", "text": "t"}]`),
			field: "messages[0].sender", rule: "is required for a UserMessage"},
		{name: "sender number", payload: conv(`{"id": "c"}`, `"messages": [{"sender": 1, "text": "t"}]`), sqlOnly: true,
			field: "messages[0].sender", rule: "must be a string"},
		{name: "sender control character", payload: conv(`{"id": "c"}`, `"messages": [{"sender": "u\r", "text": "t"}]`),
			field: "messages[0].sender", rule: "must not contain control characters"},
		{name: "sender not a participant", payload: conv(`{"id": "c", "participants": ["u1", "u2"]}`, `"messages": [{"sender": "u3", "text": "t"}]`),
			field: "messages[0].sender", rule: "must be one of the conversation's participants or users"},
		{name: "sender a user but not a participant",
			payload: conv(`{"id": "c", "participants": ["u1"]}`, `"users": [{"id": "u1", "name": "n", "email": ["e"]}, {"id": "u2", "name": "m", "email": ["f"]}]`,
				`"messages": [{"sender": "u2", "text": "t"}]`),
			field: "messages[0].sender", rule: "must be one of the conversation's participants or users"},
		{name: "sender not among users",
			payload: conv(`{"id": "c"}`, `"users": [{"id": "u1", "name": "n", "email": ["e"]}]`, `"messages": [{"sender": "u1", "text": "t"}, {"sender": "u2", "text": "t"}]`),
			field:   "messages[1].sender", rule: "must be one of the conversation's participants or users"},
		{name: "SystemMessage with sender", payload: conv(`{"id": "c"}`, `"messages": [{"type": "SystemMessage", "sender": "u1", "text": "t"}]`),
			field: "messages[0].sender", rule: "must be absent for a SystemMessage"},
		{name: "SystemMessage with empty sender", payload: conv(`{"id": "c"}`, `"messages": [{"type": "SystemMessage", "sender": "", "text": "t"}]`), sqlOnly: true,
			field: "messages[0].sender", rule: "must be absent for a SystemMessage"},
		{name: "message without text", payload: conv(`{"id": "c"}`, `"messages": [{"sender": "u1"}]`), field: "messages[0].text", rule: "is required"},
		{name: "message empty text", payload: conv(`{"id": "c"}`, `"messages": [{"type": "SystemMessage", "text": ""}]`), field: "messages[0].text", rule: "is required"},
		{name: "message text number", payload: conv(`{"id": "c"}`, `"messages": [{"sender": "u1", "text": 1}]`), sqlOnly: true,
			field: "messages[0].text", rule: "must be a string"},
		{name: "message custom not an object", payload: conv(`{"id": "c"}`, `"messages": [{"sender": "u1", "text": "t", "custom": "k"}]`), sqlOnly: true,
			field: "messages[0].custom", rule: "must be an object"},

		// What only Go can see.
		{name: "NUL in text", intent: &outbox.Intent{Conversation: outbox.Conversation{ID: "c"},
			Messages: []outbox.Message{{Sender: "u", Text: "a\x00b"}}},
			field: "messages[0].text", rule: "must not contain NUL characters"},
		{name: "invalid UTF-8 in name", intent: &outbox.Intent{Conversation: outbox.Conversation{ID: "c"},
			Users: []outbox.User{{ID: "u", Name: "\xff", Email: []string{"e"}}}},
			field: "users[0].name", rule: "must be valid UTF-8"},
		{name: "invalid UTF-8 in conversation id", intent: &outbox.Intent{Conversation: outbox.Conversation{ID: "c\xc3"}},
			field: "conversation.id", rule: "must be valid UTF-8"},
		{name: "NUL in custom value, first in key order", intent: &outbox.Intent{Conversation: outbox.Conversation{ID: "c",
			Custom: map[string]string{"bb": "\x00", "a": "x", "b": "\x00", "cc": "\x00"}}},
			field: "conversation.custom.b", rule: "must not contain NUL characters"},
	}
}

// Every rule is enforced identically by Validate, by the database on a
// plain SQL INSERT, and by Enqueue before any round trip.
func TestInvalidPayloads(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewPool(t)

	for _, tc := range badCases() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()

			var payloads []string // what the database must refuse
			if tc.payload != "" {
				payloads = append(payloads, tc.payload)
			}
			in := tc.intent
			if in == nil && !tc.sqlOnly {
				in = new(outbox.Intent)
				dec := json.NewDecoder(strings.NewReader(tc.payload))
				dec.DisallowUnknownFields()
				if err := dec.Decode(in); err != nil {
					t.Fatalf("payload not expressible in Go (mark it sqlOnly): %v", err)
				}
				// What Enqueue would store must be refused the same way.
				b, err := json.Marshal(in)
				if err != nil {
					t.Fatal(err)
				}
				payloads = append(payloads, string(b))
			}

			var goErr *outbox.ValidationError
			if in != nil {
				err := in.Validate()
				if !errors.As(err, &goErr) {
					t.Fatalf("Validate() = %v, want a *ValidationError", err)
				}
				if !errors.Is(err, outbox.ErrInvalid) {
					t.Errorf("errors.Is(err, ErrInvalid) = false for %v", err)
				}
				if goErr.Field != tc.field || goErr.Rule != tc.rule {
					t.Errorf("Validate() = {Field: %q, Rule: %q}, want {%q, %q}", goErr.Field, goErr.Rule, tc.field, tc.rule)
				}

				_, err = outbox.Enqueue(ctx, noDB{t}, *in)
				var enqErr *outbox.ValidationError
				if !errors.As(err, &enqErr) || enqErr.Field != tc.field {
					t.Errorf("Enqueue() = %v, want the ValidationError for %q", err, tc.field)
				}
			}

			for _, payload := range payloads {
				_, pgErr := insertRaw(t, pool, payload)
				if pgErr == nil {
					t.Fatalf("INSERT succeeded, want SQLSTATE 23514 for %q", tc.field)
				}
				if pgErr.Code != "23514" || pgErr.ConstraintName != "intents_payload_valid" {
					t.Errorf("INSERT failed with %s (constraint %q): %s, want 23514 on intents_payload_valid",
						pgErr.Code, pgErr.ConstraintName, pgErr.Message)
				}
				want := "invalid intent payload: " + tc.rule
				if tc.field != "" {
					want = "invalid intent payload: " + tc.field + ": " + tc.rule
				}
				if pgErr.Message != want {
					t.Errorf("database message = %q\n                          want %q", pgErr.Message, want)
				}
				if goErr != nil && pgErr.Message != goErr.Error() {
					t.Errorf("database message %q differs from Go's %q", pgErr.Message, goErr.Error())
				}
			}
		})
	}

	if n := countRows(t, pool, `SELECT count(*) FROM outbox.intents`); n != 0 {
		t.Errorf("%d intents stored, want none", n)
	}
}

// validCases are payloads both sides accept.
func validCases() []struct {
	name    string
	payload string
	sqlOnly bool
} {
	return []struct {
		name    string
		payload string
		sqlOnly bool
	}{
		{name: "contract example", payload: `{
			"users": [
				{"id": "u1", "name": "Alice", "email": ["alice@example.com"],
				 "photoUrl": "https://example.com/a.png", "welcomeMessage": "Hi!", "role": "buyer",
				 "custom": {"tier": "gold"}},
				{"id": "u2", "name": "Bob", "email": ["bob@example.com", "bob@example.org"]}
			],
			"conversation": {"id": "order_123", "subject": "Order #123",
			                 "participants": ["u1", "u2"], "custom": {"orderId": "123"}},
			"messages": [
				{"sender": "u1", "text": "Hello!", "custom": {"k": "v"}},
				{"type": "SystemMessage", "text": "Order placed"}
			]}`},
		{name: "conversation only", payload: `{"conversation": {"id": "c"}}`},
		{name: "empty users, no messages", payload: `{"users": [], "conversation": {"id": "c"}}`},
		{name: "participants default to users", payload: `{
			"users": [{"id": "u1", "name": "A", "email": ["a@x"]}, {"id": "u2", "name": "B", "email": ["b@x"]}],
			"conversation": {"id": "c"},
			"messages": [{"sender": "u2", "text": "hi"}, {"type": "UserMessage", "sender": "u1", "text": "hello"}]}`},
		{name: "participants without users", payload: `{
			"conversation": {"id": "c", "participants": ["u1"]},
			"messages": [{"sender": "u1", "text": "hi"}]}`},
		{name: "any sender when neither users nor participants", payload: `{
			"conversation": {"id": "c"}, "messages": [{"sender": "someone", "text": "hi"}]}`},
		{name: "participants beyond users", payload: `{
			"users": [{"id": "u1", "name": "A", "email": ["a@x"]}],
			"conversation": {"id": "c", "participants": ["u1", "u9"]},
			"messages": [{"sender": "u9", "text": "hi"}]}`},
		{name: "system message only", payload: `{"conversation": {"id": "c"}, "messages": [{"type": "SystemMessage", "text": "placed"}]}`},
		{name: "control characters allowed in text", payload: `{"conversation": {"id": "c", "subject": "a\tb"},
			"messages": [{"type": "SystemMessage", "text": "line 1\nline 2\u0001"}]}`},
		{name: "256-character ids counted in characters", payload: conv(`{"id": "` + strings.Repeat("é", 256) + `"}`)},
		{name: "100 users, participants and messages", payload: conv(`{"id": "c", "participants": [`+repeatJSON(100, `"u%d"`)+`]}`,
			`"users": [`+repeatJSON(100, `{"id": "u%d", "name": "n", "email": ["e"]}`)+`]`,
			`"messages": [`+repeatJSON(100, `{"sender": "u%d", "text": "t"}`)+`]`)},
		{name: "empty custom objects", payload: `{"conversation": {"id": "c", "custom": {}},
			"users": [{"id": "u", "name": "n", "email": ["e"], "custom": {}}]}`},
		{name: "nulls for optional fields", sqlOnly: true, payload: `{"users": null, "messages": null,
			"conversation": {"id": "c", "subject": null, "participants": null, "custom": null}}`},
		{name: "nulls inside users and messages", sqlOnly: true, payload: `{
			"users": [{"id": "u", "name": "n", "email": ["e"], "photoUrl": null, "role": null, "welcomeMessage": null, "custom": null}],
			"conversation": {"id": "c"},
			"messages": [{"type": null, "sender": "u", "text": "t", "custom": null},
			             {"type": "SystemMessage", "sender": null, "text": "t"}]}`},
	}
}

func TestValidPayloads(t *testing.T) {
	t.Parallel()
	pool, dbURL := pgtest.NewPool(t)
	ctx := t.Context()

	for _, tc := range validCases() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if _, pgErr := insertRaw(t, pool, tc.payload); pgErr != nil {
				t.Fatalf("plain SQL INSERT: %s", pgErr.Message)
			}
			if tc.sqlOnly {
				return
			}
			var in outbox.Intent
			dec := json.NewDecoder(strings.NewReader(tc.payload))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&in); err != nil {
				t.Fatal(err)
			}
			if err := in.Validate(); err != nil {
				t.Fatalf("Validate() = %v", err)
			}
			checkEnqueue(t, ctx, pool, dbURL, in)
		})
	}
}

// checkEnqueue enqueues in through a pool, a transaction and a connection,
// and checks each stored payload decodes back to in.
func checkEnqueue(t *testing.T, ctx context.Context, pool outbox.DB, dbURL string, in outbox.Intent) {
	t.Helper()
	id, err := outbox.Enqueue(ctx, pool, in)
	if err != nil {
		t.Fatalf("Enqueue(pool): %v", err)
	}
	checkStored(t, pool, id, in)

	conn := connect(t, dbURL)
	id, err = outbox.Enqueue(ctx, conn, in)
	if err != nil {
		t.Fatalf("Enqueue(conn): %v", err)
	}
	checkStored(t, pool, id, in)

	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // after Commit a no-op; a failed test ends the transaction either way
	id, err = outbox.Enqueue(ctx, tx, in)
	if err != nil {
		t.Fatalf("Enqueue(tx): %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	checkStored(t, pool, id, in)
}

// checkStored checks intent id holds in (compared as JSON: an empty slice
// and an absent one are the same payload).
func checkStored(t *testing.T, db outbox.DB, id int64, in outbox.Intent) {
	t.Helper()
	got, err := json.Marshal(storedIntent(t, db, id))
	if err != nil {
		t.Fatal(err)
	}
	want, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("intent %d holds\n%s\nwant\n%s", id, got, want)
	}
}

// The size limit is the one Postgres measures, to the byte, whatever
// characters the payload holds.
func TestPayloadSizeLimitMatchesDatabase(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewPool(t)
	ctx := t.Context()

	tricky := []string{
		"plain",
		`<script>&amp;</script>`,
		"line\u2028separator\u2029",
		"emoji 😀 and é and \ufffd",
		"tab\tnewline\nreturn\rbell\afeed\fback\b",
		"\x01\x1f\x7f",
		`quote " backslash \ slash /`,
	}
	for _, s := range tricky {
		t.Run(s, func(t *testing.T) {
			t.Parallel()
			intent := func(pad int) outbox.Intent {
				return outbox.Intent{
					Conversation: outbox.Conversation{ID: "c", Subject: s, Custom: map[string]string{s: s}},
					Messages:     []outbox.Message{{Type: outbox.SystemMessage, Text: s + strings.Repeat("x", pad)}},
				}
			}
			// Measure with the database, then pad to the limit exactly.
			b, err := json.Marshal(intent(0))
			if err != nil {
				t.Fatal(err)
			}
			var size int
			if err := pool.QueryRow(ctx, `SELECT octet_length($1::jsonb::text)`, string(b)).Scan(&size); err != nil {
				t.Fatal(err)
			}
			pad := outbox.MaxPayloadBytes - size

			atLimit := intent(pad)
			if err := atLimit.Validate(); err != nil {
				t.Fatalf("at the limit: Validate() = %v", err)
			}
			if _, err := outbox.Enqueue(ctx, pool, atLimit); err != nil {
				t.Fatalf("at the limit: Enqueue() = %v", err)
			}

			over := intent(pad + 1)
			err = over.Validate()
			var ve *outbox.ValidationError
			if !errors.As(err, &ve) || ve.Field != "" {
				t.Fatalf("one byte over: Validate() = %v, want the size rule", err)
			}
			b, err = json.Marshal(over)
			if err != nil {
				t.Fatal(err)
			}
			_, pgErr := insertRaw(t, pool, string(b))
			if pgErr == nil || pgErr.Message != ve.Error() {
				t.Errorf("one byte over: database says %v, Go says %q", pgErr, ve.Error())
			}
		})
	}
}

func TestValidationErrorMessages(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"field", &outbox.ValidationError{Field: "users[1].email", Rule: "must be a non-empty array of strings"},
			"invalid intent payload: users[1].email: must be a non-empty array of strings"},
		{"whole payload", &outbox.ValidationError{Rule: "must be a JSON object"}, "invalid intent payload: must be a JSON object"},
		{"batch item", &outbox.BatchError{Index: 3, Err: &outbox.ValidationError{Field: "conversation.id", Rule: "is required"}},
			"outbox: batch item 3: invalid intent payload: conversation.id: is required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := tt.err.Error(); got != tt.want {
				t.Errorf("Error() = %q, want %q", got, tt.want)
			}
			if !errors.Is(tt.err, outbox.ErrInvalid) {
				t.Errorf("errors.Is(%v, ErrInvalid) = false", tt.err)
			}
		})
	}
}

func TestResolved(t *testing.T) {
	t.Parallel()
	users := []outbox.User{{ID: "u1"}, {ID: "u2"}}
	participants := []struct {
		name string
		in   outbox.Intent
		want []string
	}{
		{"participants given", outbox.Intent{Users: users, Conversation: outbox.Conversation{Participants: []string{"u2", "u9"}}}, []string{"u2", "u9"}},
		{"default to users", outbox.Intent{Users: users}, []string{"u1", "u2"}},
		{"neither", outbox.Intent{}, nil},
	}
	for _, tt := range participants {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := tt.in.ResolvedParticipants(); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ResolvedParticipants() = %q, want %q", got, tt.want)
			}
		})
	}

	types := []struct{ typ, want string }{
		{"", outbox.UserMessage},
		{outbox.UserMessage, outbox.UserMessage},
		{outbox.SystemMessage, outbox.SystemMessage},
	}
	for _, tt := range types {
		if got := (outbox.Message{Type: tt.typ}).ResolvedType(); got != tt.want {
			t.Errorf("Message{Type: %q}.ResolvedType() = %q, want %q", tt.typ, got, tt.want)
		}
	}
}

// The Go types write exactly the contract's field names.
func TestJSONFieldNames(t *testing.T) {
	t.Parallel()
	in := outbox.Intent{
		Users: []outbox.User{{ID: "u1", Name: "Alice", Email: []string{"a@x"}, PhotoURL: "p",
			WelcomeMessage: "w", Role: "r", Custom: map[string]string{"k": "v"}}},
		Conversation: outbox.Conversation{ID: "c", Subject: "s", Participants: []string{"u1"}, Custom: map[string]string{"k": "v"}},
		Messages:     []outbox.Message{{Type: outbox.UserMessage, Sender: "u1", Text: "t", Custom: map[string]string{"k": "v"}}},
	}
	got, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"users":[{"id":"u1","name":"Alice","email":["a@x"],"photoUrl":"p","welcomeMessage":"w","role":"r","custom":{"k":"v"}}],` +
		`"conversation":{"id":"c","subject":"s","participants":["u1"],"custom":{"k":"v"}},` +
		`"messages":[{"type":"UserMessage","sender":"u1","text":"t","custom":{"k":"v"}}]}`
	if !bytes.Equal(got, []byte(want)) {
		t.Errorf("json.Marshal =\n%s\nwant\n%s", got, want)
	}
	minimal, err := json.Marshal(outbox.Intent{Conversation: outbox.Conversation{ID: "c"}})
	if err != nil {
		t.Fatal(err)
	}
	if string(minimal) != `{"conversation":{"id":"c"}}` {
		t.Errorf("minimal intent = %s", minimal)
	}
}
