package faketalkjs

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/outbox-relay/outbox-relay/provider"
)

const (
	testAppID  = "app_test"
	testSecret = "sk_test_fake_secret"
)

// bundle is a fake served over real HTTP, with a valid token for it.
type bundle struct {
	fake  *Server
	url   string
	token string
}

func setup(t *testing.T, cfg Config) *bundle {
	t.Helper()
	if cfg.AppID == "" {
		cfg.AppID = testAppID
	}
	if cfg.SecretKey == "" {
		cfg.SecretKey = testSecret
	}
	fake := New(cfg)
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	return &bundle{
		fake:  fake,
		url:   srv.URL,
		token: signToken(t, cfg.SecretKey, jwt.MapClaims{"tokenType": "app", "iss": cfg.AppID, "exp": time.Now().Add(time.Minute).Unix()}),
	}
}

func signToken(t *testing.T, secret string, claims jwt.MapClaims) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(secret))
	if err != nil {
		t.Fatalf("sign token: %v", err)
	}
	return tok
}

type reply struct {
	status int
	header http.Header
	body   string
}

type request struct {
	method, path, body string
	auth               *string // nil: the bundle's valid JWT
	contentType        *string // nil: application/json for bodies
	ctx                context.Context
}

// send makes a request; a transport error is returned, not fatal, so tests
// can expect dropped connections.
func (b *bundle) send(t *testing.T, r request) (reply, error) {
	t.Helper()
	ctx := r.ctx
	if ctx == nil {
		ctx = t.Context()
	}
	var body io.Reader
	if r.body != "" {
		body = strings.NewReader(r.body)
	}
	req, err := http.NewRequestWithContext(ctx, r.method, b.url+r.path, body)
	if err != nil {
		t.Fatalf("new request: %v", err)
	}
	auth := "Bearer " + b.token
	if r.auth != nil {
		auth = *r.auth
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	switch {
	case r.contentType != nil:
		if *r.contentType != "" {
			req.Header.Set("Content-Type", *r.contentType)
		}
	case r.body != "":
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return reply{}, err
	}
	return reply{status: resp.StatusCode, header: resp.Header, body: string(data)}, nil
}

// do is send for requests that must get a response.
func (b *bundle) do(t *testing.T, method, path, body string) reply {
	t.Helper()
	rep, err := b.send(t, request{method: method, path: path, body: body})
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return rep
}

// must does a request that must succeed.
func (b *bundle) must(t *testing.T, method, path, body string) reply {
	t.Helper()
	rep := b.do(t, method, path, body)
	if rep.status != http.StatusOK {
		t.Fatalf("%s %s: status %d, body %s", method, path, rep.status, rep.body)
	}
	return rep
}

func userPath(id string) string { return "/v1/" + testAppID + "/users/" + url.PathEscape(id) }
func convPath(id string) string { return "/v1/" + testAppID + "/conversations/" + url.PathEscape(id) }
func msgsPath(id string) string { return convPath(id) + "/messages" }

const aliceJSON = `{"name":"Alice","email":["alice@example.com"]}`

// seedConversation stores users u1, u2 (participants) and u3 (not a
// participant) and conversation c1.
func (b *bundle) seedConversation(t *testing.T) {
	t.Helper()
	for _, id := range []string{"u1", "u2", "u3"} {
		b.must(t, "PUT", userPath(id), `{"name":"`+id+`","email":["`+id+`@example.com"]}`)
	}
	b.must(t, "PUT", convPath("c1"), `{"participants":["u1","u2"],"subject":"Order"}`)
}

func ptr(s string) *string { return &s }

func TestAuthentication(t *testing.T) {
	t.Parallel()
	exp := time.Now().Add(time.Minute).Unix()
	tests := []struct {
		name string
		auth func(t *testing.T) string
		path string
		want int
	}{
		{"app JWT", func(t *testing.T) string {
			return "Bearer " + signToken(t, testSecret, jwt.MapClaims{"tokenType": "app", "iss": testAppID, "exp": exp})
		}, "", http.StatusOK},
		{"legacy secret key", func(*testing.T) string { return "Bearer " + testSecret }, "", http.StatusOK},
		{"no header", func(*testing.T) string { return "" }, "", http.StatusUnauthorized},
		{"basic scheme", func(*testing.T) string { return "Basic " + testSecret }, "", http.StatusUnauthorized},
		{"wrong secret key", func(*testing.T) string { return "Bearer sk_wrong" }, "", http.StatusUnauthorized},
		{"JWT signed with another key", func(t *testing.T) string {
			return "Bearer " + signToken(t, "other", jwt.MapClaims{"tokenType": "app", "iss": testAppID, "exp": exp})
		}, "", http.StatusUnauthorized},
		{"expired JWT", func(t *testing.T) string {
			return "Bearer " + signToken(t, testSecret, jwt.MapClaims{"tokenType": "app", "iss": testAppID, "exp": time.Now().Add(-time.Minute).Unix()})
		}, "", http.StatusUnauthorized},
		{"JWT without exp", func(t *testing.T) string {
			return "Bearer " + signToken(t, testSecret, jwt.MapClaims{"tokenType": "app", "iss": testAppID})
		}, "", http.StatusUnauthorized},
		{"JWT for another app", func(t *testing.T) string {
			return "Bearer " + signToken(t, testSecret, jwt.MapClaims{"tokenType": "app", "iss": "other", "exp": exp})
		}, "", http.StatusUnauthorized},
		{"JWT of another token type", func(t *testing.T) string {
			return "Bearer " + signToken(t, testSecret, jwt.MapClaims{"tokenType": "user", "iss": testAppID, "exp": exp})
		}, "", http.StatusUnauthorized},
		{"JWT with HS512", func(t *testing.T) string {
			tok, err := jwt.NewWithClaims(jwt.SigningMethodHS512, jwt.MapClaims{"tokenType": "app", "iss": testAppID, "exp": exp}).SignedString([]byte(testSecret))
			if err != nil {
				t.Fatal(err)
			}
			return "Bearer " + tok
		}, "", http.StatusUnauthorized},
		{"wrong app id in path", func(*testing.T) string { return "Bearer " + testSecret }, "/v1/other/users/u1", http.StatusNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, Config{})
			path := tt.path
			if path == "" {
				path = userPath("u1")
			}
			rep, err := b.send(t, request{method: "PUT", path: path, body: aliceJSON, auth: ptr(tt.auth(t))})
			if err != nil {
				t.Fatal(err)
			}
			if rep.status != tt.want {
				t.Fatalf("status %d, want %d (body %s)", rep.status, tt.want, rep.body)
			}
			if strings.Contains(rep.body, testSecret) {
				t.Fatalf("response body contains the secret key: %s", rep.body)
			}
		})
	}
}

// A token is verified once and then remembered; it must still stop working
// when it expires.
func TestRememberedTokenExpires(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	now := time.Now()
	b := setup(t, Config{Clock: func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	}})
	b.must(t, "PUT", userPath("u1"), aliceJSON)
	b.must(t, "PUT", userPath("u1"), aliceJSON) // remembered
	mu.Lock()
	now = now.Add(2 * time.Minute) // the token's exp was a minute ahead
	mu.Unlock()
	if rep := b.do(t, "PUT", userPath("u1"), aliceJSON); rep.status != http.StatusUnauthorized {
		t.Fatalf("expired remembered token: status %d, want 401 (body %s)", rep.status, rep.body)
	}
}

func TestSetSecretKeyRotates(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	b.must(t, "PUT", userPath("u1"), aliceJSON)

	b.fake.SetSecretKey("sk_new")
	if rep := b.do(t, "PUT", userPath("u1"), aliceJSON); rep.status != http.StatusUnauthorized {
		t.Fatalf("old JWT after rotation: status %d, want 401", rep.status)
	}
	rep, err := b.send(t, request{method: "PUT", path: userPath("u1"), body: aliceJSON, auth: ptr("Bearer " + testSecret)})
	if err != nil || rep.status != http.StatusUnauthorized {
		t.Fatalf("old legacy key after rotation: %v %d, want 401", err, rep.status)
	}
	b.token = signToken(t, "sk_new", jwt.MapClaims{"tokenType": "app", "iss": testAppID, "exp": time.Now().Add(time.Minute).Unix()})
	b.must(t, "PUT", userPath("u1"), aliceJSON)
}

func TestRequestShape(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		method      string
		path        string
		body        string
		contentType *string
		want        int
	}{
		{"missing content type", "PUT", userPath("u1"), aliceJSON, ptr(""), http.StatusUnsupportedMediaType},
		{"text/plain", "PUT", userPath("u1"), aliceJSON, ptr("text/plain"), http.StatusUnsupportedMediaType},
		{"json with charset", "PUT", userPath("u1"), aliceJSON, ptr("application/json; charset=utf-8"), http.StatusOK},
		{"unknown path", "GET", "/v1/" + testAppID + "/widgets/x", "", nil, http.StatusNotFound},
		{"not under v1", "GET", "/v2/" + testAppID + "/users/u1", "", nil, http.StatusNotFound},
		{"empty user id", "PUT", "/v1/" + testAppID + "/users/", aliceJSON, nil, http.StatusNotFound},
		{"POST to user", "POST", userPath("u1"), aliceJSON, nil, http.StatusMethodNotAllowed},
		{"DELETE conversation", "DELETE", convPath("c1"), "", nil, http.StatusMethodNotAllowed},
		{"PUT messages", "PUT", msgsPath("c1"), `[]`, nil, http.StatusMethodNotAllowed},
		{"malformed JSON", "PUT", userPath("u1"), `{"name":`, nil, http.StatusBadRequest},
		{"trailing data", "PUT", userPath("u1"), aliceJSON + `{}`, nil, http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, Config{})
			rep, err := b.send(t, request{method: tt.method, path: tt.path, body: tt.body, contentType: tt.contentType})
			if err != nil {
				t.Fatal(err)
			}
			if rep.status != tt.want {
				t.Fatalf("status %d, want %d (body %s)", rep.status, tt.want, rep.body)
			}
			if !json.Valid([]byte(rep.body)) {
				t.Fatalf("body is not JSON: %q", rep.body)
			}
		})
	}
}

func TestUserPut(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		body       string
		want       int
		wantReason string
	}{
		{"minimal", aliceJSON, http.StatusOK, ""},
		{"all documented fields", `{"name":"A","email":["a@x"],"photoUrl":"https://p","welcomeMessage":"Hi","role":"buyer","custom":{"tier":"gold"}}`, http.StatusOK, ""},
		{"missing name", `{"email":["a@x"]}`, http.StatusBadRequest, "name"},
		{"empty name", `{"name":"","email":["a@x"]}`, http.StatusBadRequest, "name"},
		{"no email", `{"name":"A"}`, http.StatusOK, ""},
		{"null email", `{"name":"A","email":null}`, http.StatusBadRequest, "email is null"},
		{"empty email array", `{"name":"A","email":[]}`, http.StatusBadRequest, "email"},
		{"email as string", `{"name":"A","email":"a@x"}`, http.StatusBadRequest, "email"},
		{"empty email", `{"name":"A","email":[""]}`, http.StatusBadRequest, "email[0]"},
		{"custom number", `{"name":"A","email":["a@x"],"custom":{"n":1}}`, http.StatusBadRequest, "custom"},
		{"unknown field", `{"name":"A","email":["a@x"],"phone":"1"}`, http.StatusBadRequest, "phone"},
		{"id in body", `{"id":"u1","name":"A","email":["a@x"]}`, http.StatusBadRequest, "id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, Config{})
			rep := b.do(t, "PUT", userPath("u1"), tt.body)
			if rep.status != tt.want {
				t.Fatalf("status %d, want %d (body %s)", rep.status, tt.want, rep.body)
			}
			if tt.wantReason != "" && !strings.Contains(rep.body, tt.wantReason) {
				t.Fatalf("body %s does not name %q", rep.body, tt.wantReason)
			}
			if _, stored := b.fake.User("u1"); stored != (tt.want == http.StatusOK) {
				t.Fatalf("stored = %t after status %d", stored, rep.status)
			}
		})
	}
}

func TestUserPutMerges(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	b.must(t, "PUT", userPath("u1"), `{"name":"A","email":["a@x"],"role":"buyer","welcomeMessage":"Hi","custom":{"k1":"v1","k2":"v2"}}`)
	b.must(t, "PUT", userPath("u1"), `{"name":"B","email":["b@x"],"custom":{"k2":"new","k1":null}}`)
	b.must(t, "PUT", userPath("u1"), `{"name":"B","photoUrl":"https://p","welcomeMessage":null}`)

	u, ok := b.fake.User("u1")
	if !ok {
		t.Fatal("user not stored")
	}
	if u.Name != "B" || !slices.Equal(u.Email, []string{"b@x"}) || u.Role != "buyer" ||
		u.PhotoURL != "https://p" || u.WelcomeMessage != "" {
		t.Fatalf("user = %+v; want name, email and photoUrl replaced, welcomeMessage cleared, role kept", u)
	}
	if len(u.Custom) != 1 || u.Custom["k2"] != "new" {
		t.Fatalf("custom = %v; want {k2:new}", u.Custom)
	}

	rep := b.must(t, "GET", userPath("u1"), "")
	var got map[string]any
	if err := json.Unmarshal([]byte(rep.body), &got); err != nil {
		t.Fatal(err)
	}
	if got["id"] != "u1" || got["name"] != "B" {
		t.Fatalf("GET user = %s", rep.body)
	}
	if rep := b.do(t, "GET", userPath("nobody"), ""); rep.status != http.StatusNotFound {
		t.Fatalf("GET missing user: status %d, want 404", rep.status)
	}
}

func TestConversationPut(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		body string
		want int
	}{
		{"empty object", `{}`, http.StatusOK},
		{"all fields", `{"participants":["u1","u2"],"subject":"S","custom":{"orderId":"1"}}`, http.StatusOK},
		{"participants not array", `{"participants":"u1"}`, http.StatusBadRequest},
		{"participant not string", `{"participants":[1]}`, http.StatusBadRequest},
		{"empty participant", `{"participants":[""]}`, http.StatusBadRequest},
		{"custom not string", `{"custom":{"a":true}}`, http.StatusBadRequest},
		{"unknown field", `{"photoUrl":"x"}`, http.StatusBadRequest},
		{"array body", `[]`, http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, Config{})
			rep := b.do(t, "PUT", convPath("c1"), tt.body)
			if rep.status != tt.want {
				t.Fatalf("status %d, want %d (body %s)", rep.status, tt.want, rep.body)
			}
		})
	}
}

func TestConversationPutMerges(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	b.must(t, "PUT", convPath("c1"), `{"participants":["u1","u2"],"subject":"S1","custom":{"a":"1"}}`)
	b.must(t, "PUT", convPath("c1"), `{"participants":["u2","u3"],"custom":{"b":"2"}}`)

	c, ok := b.fake.Conversation("c1")
	if !ok {
		t.Fatal("conversation not stored")
	}
	if !slices.Equal(c.Participants, []string{"u1", "u2", "u3"}) {
		t.Fatalf("participants = %v; want participants added, none removed", c.Participants)
	}
	if c.Subject != "S1" || c.Custom["a"] != "1" || c.Custom["b"] != "2" {
		t.Fatalf("conversation = %+v; want subject kept and custom merged", c)
	}
	rep := b.must(t, "GET", convPath("c1"), "")
	if !strings.Contains(rep.body, `"u3":{"access":"ReadWrite","notify":true}`) {
		t.Fatalf("GET conversation = %s", rep.body)
	}
}

func TestPostMessagesValidation(t *testing.T) {
	t.Parallel()
	msg := func(fields string) string { return `{"text":"hi",` + fields + `}` }
	tests := []struct {
		name       string
		conv       string
		body       string
		want       int
		wantReason string
	}{
		{"user message", "c1", `[` + msg(`"sender":"u1","type":"UserMessage"`) + `]`, http.StatusOK, ""},
		{"type defaults to UserMessage", "c1", `[{"text":"hi","sender":"u1"}]`, http.StatusOK, ""},
		{"system message", "c1", `[{"text":"placed","type":"SystemMessage"}]`, http.StatusOK, ""},
		{"all fields", "c1", `[` + msg(`"sender":"u1","type":"UserMessage","custom":{"k":"v"},"idempotencyKey":"k1"`) + `]`, http.StatusOK, ""},
		{"ten messages", "c1", `[` + strings.Repeat(`{"text":"x","sender":"u1"},`, 9) + `{"text":"x","sender":"u1"}]`, http.StatusOK, ""},
		{"object instead of array", "c1", msg(`"sender":"u1"`), http.StatusBadRequest, "array"},
		{"empty array", "c1", `[]`, http.StatusBadRequest, "1 to 10"},
		{"eleven messages", "c1", `[` + strings.Repeat(`{"text":"x","sender":"u1"},`, 10) + `{"text":"x","sender":"u1"}]`, http.StatusBadRequest, "1 to 10"},
		{"conversation missing", "nope", `[` + msg(`"sender":"u1"`) + `]`, http.StatusNotFound, "conversation"},
		{"empty text", "c1", `[{"text":"","sender":"u1"}]`, http.StatusBadRequest, "text"},
		{"missing text", "c1", `[{"sender":"u1"}]`, http.StatusBadRequest, "text"},
		{"user message without sender", "c1", `[{"text":"hi"}]`, http.StatusBadRequest, "sender"},
		{"sender not synchronised", "c1", `[` + msg(`"sender":"ghost"`) + `]`, http.StatusBadRequest, "synchronised"},
		{"sender not participant", "c1", `[` + msg(`"sender":"u3"`) + `]`, http.StatusBadRequest, "participant"},
		{"system message with sender", "c1", `[` + msg(`"sender":"u1","type":"SystemMessage"`) + `]`, http.StatusBadRequest, "sender"},
		{"unknown type", "c1", `[` + msg(`"sender":"u1","type":"Bot"`) + `]`, http.StatusBadRequest, "type"},
		{"unknown field", "c1", `[` + msg(`"sender":"u1","senderId":"u1"`) + `]`, http.StatusBadRequest, "senderId"},
		{"custom not string", "c1", `[` + msg(`"sender":"u1","custom":{"n":2}`) + `]`, http.StatusBadRequest, "custom"},
		{"custom null", "c1", `[` + msg(`"sender":"u1","custom":{"n":null}`) + `]`, http.StatusBadRequest, "custom"},
		{"valid then invalid stores nothing", "c1", `[` + msg(`"sender":"u1"`) + `,` + msg(`"sender":"u3"`) + `]`, http.StatusBadRequest, "messages[1]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, Config{})
			b.seedConversation(t)
			rep := b.do(t, "POST", msgsPath(tt.conv), tt.body)
			if rep.status != tt.want {
				t.Fatalf("status %d, want %d (body %s)", rep.status, tt.want, rep.body)
			}
			if tt.wantReason != "" && !strings.Contains(rep.body, tt.wantReason) {
				t.Fatalf("body %s does not mention %q", rep.body, tt.wantReason)
			}
			stored := b.fake.MessageCount()
			if tt.want != http.StatusOK {
				if stored != 0 {
					t.Fatalf("%d messages stored by a refused post", stored)
				}
				return
			}
			var ids []struct{ ID string }
			if err := json.Unmarshal([]byte(rep.body), &ids); err != nil {
				t.Fatalf("response %s: %v", rep.body, err)
			}
			if len(ids) != stored || !strings.HasPrefix(ids[0].ID, "msg_") {
				t.Fatalf("response %s for %d stored messages", rep.body, stored)
			}
		})
	}
}

func TestPostMessagesStoresInOrder(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	b.seedConversation(t)
	b.must(t, "POST", msgsPath("c1"), `[{"text":"one","sender":"u1","custom":{"k":"v"},"idempotencyKey":"k1"},{"text":"two","type":"SystemMessage"}]`)

	got := b.fake.Messages("c1")
	if len(got) != 2 {
		t.Fatalf("got %d messages, want 2", len(got))
	}
	want := []StoredMessage{
		{ConversationID: "c1", Text: "one", Sender: "u1", Type: provider.UserMessage, IdempotencyKey: "k1"},
		{ConversationID: "c1", Text: "two", Type: provider.SystemMessage},
	}
	for i, m := range got {
		w := want[i]
		if m.ConversationID != w.ConversationID || m.Text != w.Text || m.Sender != w.Sender || m.Type != w.Type ||
			m.IdempotencyKey != w.IdempotencyKey || m.ID == "" || m.StoredAt.IsZero() {
			t.Fatalf("message %d = %+v, want like %+v", i, m, w)
		}
	}
	if got[0].Custom["k"] != "v" {
		t.Fatalf("custom = %v", got[0].Custom)
	}
	// Copies: changing what was returned changes nothing stored.
	got[0].Custom["k"] = "changed"
	if b.fake.Messages("c1")[0].Custom["k"] != "v" {
		t.Fatal("Messages returned shared memory")
	}
	if all := b.fake.AllMessages(); len(all) != 2 || all[1].Text != "two" {
		t.Fatalf("AllMessages = %+v", all)
	}
}

func TestIdempotencyKeySuppressesDuplicates(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	b.seedConversation(t)
	b.must(t, "PUT", convPath("c2"), `{"participants":["u1"]}`)

	first := b.must(t, "POST", msgsPath("c1"), `[{"text":"hi","sender":"u1","idempotencyKey":"k1"}]`)
	retry := b.must(t, "POST", msgsPath("c1"), `[{"text":"hi","sender":"u1","idempotencyKey":"k1"},{"text":"more","sender":"u1","idempotencyKey":"k2"}]`)
	// The same key in another conversation is another message.
	b.must(t, "POST", msgsPath("c2"), `[{"text":"hi","sender":"u1","idempotencyKey":"k1"}]`)
	// Without a key, nothing is suppressed.
	b.must(t, "POST", msgsPath("c1"), `[{"text":"nokey","sender":"u1"},{"text":"nokey","sender":"u1"}]`)
	// A repeated key inside one array is stored once.
	inOne := b.must(t, "POST", msgsPath("c1"), `[{"text":"x","sender":"u1","idempotencyKey":"k3"},{"text":"x","sender":"u1","idempotencyKey":"k3"}]`)

	var firstIDs, retryIDs, inOneIDs []struct{ ID string }
	for _, p := range []struct {
		body string
		into *[]struct{ ID string }
	}{{first.body, &firstIDs}, {retry.body, &retryIDs}, {inOne.body, &inOneIDs}} {
		if err := json.Unmarshal([]byte(p.body), p.into); err != nil {
			t.Fatal(err)
		}
	}
	if retryIDs[0].ID != firstIDs[0].ID {
		t.Fatalf("retried message got id %s, want the original %s", retryIDs[0].ID, firstIDs[0].ID)
	}
	if inOneIDs[0].ID != inOneIDs[1].ID {
		t.Fatalf("repeated key in one post got ids %v", inOneIDs)
	}
	if n := len(b.fake.Messages("c1")); n != 5 { // k1, k2, two without key, k3
		t.Fatalf("c1 holds %d messages, want 5", n)
	}
	if n := len(b.fake.Messages("c2")); n != 1 {
		t.Fatalf("c2 holds %d messages, want 1", n)
	}
	if st := b.fake.Stats(); st.DuplicatesSuppressed != 2 {
		t.Fatalf("DuplicatesSuppressed = %d, want 2", st.DuplicatesSuppressed)
	}
}

func TestListMessagesPaging(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	b.seedConversation(t)
	for i := range 5 {
		b.must(t, "POST", msgsPath("c1"), fmt.Sprintf(`[{"text":"m%d","sender":"u1"}]`, i))
	}
	list := func(query string) ([]string, []string) {
		t.Helper()
		rep := b.must(t, "GET", msgsPath("c1")+query, "")
		var page struct {
			Data []struct {
				ID       string  `json:"id"`
				Text     string  `json:"text"`
				SenderID *string `json:"senderId"`
			} `json:"data"`
		}
		if err := json.Unmarshal([]byte(rep.body), &page); err != nil {
			t.Fatal(err)
		}
		var ids, texts []string
		for _, m := range page.Data {
			ids = append(ids, m.ID)
			texts = append(texts, m.Text)
		}
		return ids, texts
	}
	ids, texts := list("")
	if !slices.Equal(texts, []string{"m4", "m3", "m2", "m1", "m0"}) {
		t.Fatalf("texts = %v, want newest first", texts)
	}
	if _, texts := list("?limit=2"); !slices.Equal(texts, []string{"m4", "m3"}) {
		t.Fatalf("limit=2: %v", texts)
	}
	if _, texts := list("?limit=2&startingAfter=" + ids[1]); !slices.Equal(texts, []string{"m2", "m1"}) {
		t.Fatalf("page 2: %v", texts)
	}
	if _, texts := list("?startingAfter=" + ids[4]); len(texts) != 0 {
		t.Fatalf("after the oldest: %v", texts)
	}
	for _, q := range []string{"?limit=0", "?limit=101", "?limit=x", "?startingAfter=msg_nope"} {
		if rep := b.do(t, "GET", msgsPath("c1")+q, ""); rep.status != http.StatusBadRequest {
			t.Fatalf("GET %s: status %d, want 400", q, rep.status)
		}
	}
	if rep := b.do(t, "GET", msgsPath("nope"), ""); rep.status != http.StatusNotFound {
		t.Fatalf("GET messages of missing conversation: status %d, want 404", rep.status)
	}
}

func TestHostileIDsRoundTrip(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	ids := []string{"a/b?c#d%e f ü", "%2F", "x+y", "💬;,=@:"}
	for _, id := range ids {
		b.must(t, "PUT", userPath(id), aliceJSON)
		b.must(t, "PUT", convPath(id), `{"participants":[`+strconvQuote(id)+`]}`)
		b.must(t, "POST", msgsPath(id), `[{"text":"hi","sender":`+strconvQuote(id)+`}]`)
		if _, ok := b.fake.User(id); !ok {
			t.Fatalf("user %q not stored under its id", id)
		}
		if n := len(b.fake.Messages(id)); n != 1 {
			t.Fatalf("conversation %q holds %d messages", id, n)
		}
	}
	if n := b.fake.UserCount(); n != len(ids) {
		t.Fatalf("UserCount = %d, want %d", n, len(ids))
	}
}

func strconvQuote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func TestStatsCount(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	b.seedConversation(t) // 3 user PUTs + 1 conversation PUT
	b.must(t, "POST", msgsPath("c1"), `[{"text":"hi","sender":"u1"}]`)
	b.do(t, "POST", msgsPath("nope"), `[{"text":"hi","sender":"u1"}]`)
	b.do(t, "GET", userPath("u1"), "")
	b.do(t, "GET", "/v1/"+testAppID+"/nothing", "")

	st := b.fake.Stats()
	want := Stats{
		Requests: 8,
		Routes:   map[string]int64{RouteUserPut: 3, RouteConversationPut: 1, RouteMessagePost: 2, RouteGet: 1, RouteOther: 1},
		Statuses: map[int]int64{200: 6, 404: 2},
	}
	if st.Requests != want.Requests || !mapsEqual(st.Routes, want.Routes) || !mapsEqual(st.Statuses, want.Statuses) {
		t.Fatalf("stats = %+v, want %+v", st, want)
	}
	if st.Rejections != 2 || st.Users != 3 || st.Conversations != 1 || st.Messages != 1 {
		t.Fatalf("stats = %+v", st)
	}
	if n := b.fake.ConversationCount(); n != 1 {
		t.Fatalf("ConversationCount = %d", n)
	}

	st.Routes[RouteGet] = 100 // a copy
	b.fake.Reset()
	if st := b.fake.Stats(); st.Requests != 0 || len(st.Routes) != 0 || st.Users != 3 {
		t.Fatalf("after Reset: %+v; want zero counters, data kept", st)
	}
	b.fake.Clear()
	if b.fake.UserCount() != 0 || b.fake.MessageCount() != 0 {
		t.Fatal("Clear kept data")
	}
}

func mapsEqual[K comparable](a, b map[K]int64) bool {
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

func TestConcurrentUse(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{Seed: 7})
	b.seedConversation(t)
	b.fake.Reset()

	const workers, posts = 8, 20
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range posts {
				// Every worker sends the same keys: each is stored once.
				body := fmt.Sprintf(`[{"text":"m","sender":"u1","idempotencyKey":"k%d"}]`, i)
				// send, not do: only the test goroutine may call t.Fatal.
				rep, err := b.send(t, request{method: "POST", path: msgsPath("c1"), body: body})
				if err != nil || (rep.status != http.StatusOK && rep.status != http.StatusInternalServerError) {
					t.Errorf("worker %d: status %d, err %v", w, rep.status, err)
				}
				_ = b.fake.Stats()
				_ = b.fake.Messages("c1")
			}
		})
	}
	wg.Go(func() {
		for i := range posts {
			b.fake.SetFaults(Faults{FailAfter: float64(i%2) * 0.5})
			_ = b.fake.Faults()
		}
	})
	wg.Wait()

	if n := b.fake.MessageCount(); n != posts {
		t.Fatalf("%d messages stored, want %d (one per key)", n, posts)
	}
	st := b.fake.Stats()
	if st.Requests != workers*posts || st.DuplicatesSuppressed != workers*posts-posts {
		t.Fatalf("stats = %+v", st)
	}
}
