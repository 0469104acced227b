package talkjs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/provider"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
)

const (
	testAppID  = "app_test"
	testSecret = "sk_test_client_secret"
)

// recorded is what the server saw of one request.
type recorded struct {
	method, requestURI, auth, contentType, userAgent string
	body                                             string
}

// recorder wraps a handler and keeps what each request looked like.
type recorder struct {
	mu   sync.Mutex
	reqs []recorded
}

func (rec *recorder) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		rec.mu.Lock()
		rec.reqs = append(rec.reqs, recorded{
			method:      r.Method,
			requestURI:  r.RequestURI,
			auth:        r.Header.Get("Authorization"),
			contentType: r.Header.Get("Content-Type"),
			userAgent:   r.Header.Get("User-Agent"),
			body:        string(body),
		})
		rec.mu.Unlock()
		h.ServeHTTP(w, r)
	})
}

func (rec *recorder) all() []recorded {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]recorded(nil), rec.reqs...)
}

// bundle is a client talking to a fake TalkJS over real HTTP.
type bundle struct {
	fake   *faketalkjs.Server
	rec    *recorder
	url    string
	client *Client
}

// setup serves a fake (secret testSecret) and makes a client for it;
// edit adjusts the client's Config.
func setup(t *testing.T, faults faketalkjs.Faults, edit func(*Config)) *bundle {
	t.Helper()
	fake := faketalkjs.New(faketalkjs.Config{AppID: testAppID, SecretKey: testSecret, Faults: faults, Seed: 1})
	rec := &recorder{}
	srv := httptest.NewServer(rec.wrap(fake))
	t.Cleanup(srv.Close)
	return &bundle{fake: fake, rec: rec, url: srv.URL, client: newClient(t, srv.URL, edit)}
}

func newClient(t *testing.T, baseURL string, edit func(*Config)) *Client {
	t.Helper()
	cfg := Config{AppID: testAppID, SecretKey: testSecret, BaseURL: baseURL, Timeout: 5 * time.Second}
	if edit != nil {
		edit(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

var (
	alice = provider.User{ID: "u1", Name: "Alice", Email: []string{"alice@example.com"}, Role: "buyer", Custom: map[string]string{"tier": "gold"}}
	bob   = provider.User{ID: "u2", Name: "Bob", Email: []string{"bob@example.com"}}
	conv  = provider.Conversation{ID: "order_1", Participants: []string{"u1", "u2"}, Subject: "Order #1", Custom: map[string]string{"orderId": "1"}}
)

func msg(key string) provider.Message {
	return provider.Message{Text: "Hello", Sender: "u1", IdempotencyKey: key}
}

// startConversation makes the three calls of a conversation start.
func startConversation(ctx context.Context, c *Client) error {
	for _, u := range []provider.User{alice, bob} {
		if err := c.PutUser(ctx, u); err != nil {
			return err
		}
	}
	if err := c.PutConversation(ctx, conv); err != nil {
		return err
	}
	return c.PostMessages(ctx, conv.ID, []provider.Message{
		msg("k1"),
		{Type: provider.SystemMessage, Text: "Order placed", IdempotencyKey: "k2"},
	})
}

// wantError checks that err is a *provider.Error of the given kind and
// status.
func wantError(t *testing.T, err error, kind provider.Kind, status int) {
	t.Helper()
	_ = wantProviderError(t, err, kind, status)
}

// wantProviderError is wantError, returning the *provider.Error.
func wantProviderError(t *testing.T, err error, kind provider.Kind, status int) *provider.Error {
	t.Helper()
	var pe *provider.Error
	if !errors.As(err, &pe) {
		t.Fatalf("error %v (%T) is not a *provider.Error", err, err)
	}
	if pe.Kind != kind || pe.Status != status {
		t.Fatalf("error %v: kind %s status %d, want %s %d", err, pe.Kind, pe.Status, kind, status)
	}
	return pe
}

func TestConversationStart(t *testing.T) {
	t.Parallel()
	for _, legacy := range []bool{false, true} {
		t.Run(fmt.Sprintf("legacy=%t", legacy), func(t *testing.T) {
			t.Parallel()
			b := setup(t, faketalkjs.Faults{}, func(c *Config) { c.LegacyAuth = legacy; c.UserAgent = "test-agent" })
			if err := startConversation(t.Context(), b.client); err != nil {
				t.Fatalf("conversation start: %v", err)
			}

			u, ok := b.fake.User("u1")
			if !ok || u.Name != "Alice" || u.Role != "buyer" || u.Custom["tier"] != "gold" {
				t.Fatalf("stored user = %+v, %t", u, ok)
			}
			c, ok := b.fake.Conversation(conv.ID)
			if !ok || c.Subject != conv.Subject || len(c.Participants) != 2 {
				t.Fatalf("stored conversation = %+v, %t", c, ok)
			}
			msgs := b.fake.Messages(conv.ID)
			if len(msgs) != 2 || msgs[0].Type != provider.UserMessage || msgs[0].IdempotencyKey != "k1" ||
				msgs[1].Type != provider.SystemMessage || msgs[1].Sender != "" {
				t.Fatalf("stored messages = %+v", msgs)
			}

			for _, r := range b.rec.all() {
				if r.contentType != "application/json" || r.userAgent != "test-agent" {
					t.Fatalf("request %+v: want JSON content type and the configured user agent", r)
				}
				isLegacy := r.auth == "Bearer "+testSecret
				if isLegacy != legacy || !strings.HasPrefix(r.auth, "Bearer ") {
					t.Fatalf("Authorization %q with LegacyAuth=%t", r.auth, legacy)
				}
			}
		})
	}
}

func TestRetriedPostIsNotDuplicated(t *testing.T) {
	t.Parallel()
	// The first post is applied but its response is lost; the retry
	// carries the same idempotency keys.
	b := setup(t, faketalkjs.Faults{}, nil)
	ctx := t.Context()
	if err := startConversation(ctx, b.client); err != nil {
		t.Fatal(err)
	}
	b.fake.SetFaults(faketalkjs.Faults{DropAfter: 1})
	err := b.client.PostMessages(ctx, conv.ID, []provider.Message{msg("k3")})
	wantError(t, err, provider.Retryable, 0)
	b.fake.SetFaults(faketalkjs.Faults{})
	if err := b.client.PostMessages(ctx, conv.ID, []provider.Message{msg("k3")}); err != nil {
		t.Fatal(err)
	}
	if n := len(b.fake.Messages(conv.ID)); n != 3 {
		t.Fatalf("%d messages stored, want 3", n)
	}
}

func TestFailureClassification(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name           string
		faults         faketalkjs.Faults
		call           func(context.Context, *Client) error
		wantKind       provider.Kind
		wantStatus     int
		wantRetryAfter time.Duration
		wantInErr      string
	}{
		{
			name: "400 names the field",
			call: func(ctx context.Context, c *Client) error {
				return c.PutUser(ctx, provider.User{ID: "u1", Email: []string{"a@x"}})
			},
			wantKind:   provider.Permanent,
			wantStatus: 400,
			wantInErr:  "name is required",
		},
		{
			name: "404 message before conversation",
			call: func(ctx context.Context, c *Client) error {
				return c.PostMessages(ctx, "missing", []provider.Message{{Type: provider.SystemMessage, Text: "x", IdempotencyKey: "k"}})
			},
			wantKind:   provider.Permanent,
			wantStatus: 404,
			wantInErr:  "POST /v1/app_test/conversations/missing/messages",
		},
		{
			name: "400 sender not a participant",
			call: func(ctx context.Context, c *Client) error {
				if err := c.PutConversation(ctx, provider.Conversation{ID: "c9"}); err != nil {
					return err
				}
				return c.PostMessages(ctx, "c9", []provider.Message{msg("k")})
			},
			wantKind:   provider.Permanent,
			wantStatus: 400,
			wantInErr:  "synchronised",
		},
		{
			name:           "429 with Retry-After",
			faults:         faketalkjs.Faults{TooManyRequests: 1, RetryAfter: 3 * time.Second},
			call:           func(ctx context.Context, c *Client) error { return c.PutUser(ctx, alice) },
			wantKind:       provider.RateLimited,
			wantStatus:     429,
			wantRetryAfter: 3 * time.Second,
		},
		{
			name:       "429 without Retry-After",
			faults:     faketalkjs.Faults{TooManyRequests: 1, RetryAfter: -1},
			call:       func(ctx context.Context, c *Client) error { return c.PutUser(ctx, alice) },
			wantKind:   provider.RateLimited,
			wantStatus: 429,
		},
		{
			name:       "500 before processing",
			faults:     faketalkjs.Faults{FailBefore: 1},
			call:       func(ctx context.Context, c *Client) error { return c.PutUser(ctx, alice) },
			wantKind:   provider.Retryable,
			wantStatus: 500,
			wantInErr:  "INTERNAL_SERVER_ERROR",
		},
		{
			name:       "500 after processing",
			faults:     faketalkjs.Faults{FailAfter: 1},
			call:       func(ctx context.Context, c *Client) error { return c.PutConversation(ctx, conv) },
			wantKind:   provider.Retryable,
			wantStatus: 500,
		},
		{
			name:     "dropped connection",
			faults:   faketalkjs.Faults{DropAfter: 1},
			call:     func(ctx context.Context, c *Client) error { return c.PutUser(ctx, alice) },
			wantKind: provider.Retryable,
		},
		{
			name:     "server down",
			faults:   faketalkjs.Faults{Down: true},
			call:     func(ctx context.Context, c *Client) error { return c.PutUser(ctx, alice) },
			wantKind: provider.Retryable,
		},
		{
			name:       "rejected user",
			faults:     faketalkjs.Faults{RejectUserIDs: []string{"u1"}},
			call:       func(ctx context.Context, c *Client) error { return c.PutUser(ctx, alice) },
			wantKind:   provider.Permanent,
			wantStatus: 400,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, tt.faults, nil)
			err := tt.call(t.Context(), b.client)
			pe := wantProviderError(t, err, tt.wantKind, tt.wantStatus)
			if pe.RetryAfter != tt.wantRetryAfter {
				t.Fatalf("RetryAfter = %s, want %s", pe.RetryAfter, tt.wantRetryAfter)
			}
			if !strings.Contains(err.Error(), tt.wantInErr) {
				t.Fatalf("error %q does not contain %q", err, tt.wantInErr)
			}
			if provider.KindOf(err) != tt.wantKind {
				t.Fatalf("KindOf = %s", provider.KindOf(err))
			}
		})
	}
}

func TestWrongCredentialsAreAuth(t *testing.T) {
	t.Parallel()
	for _, legacy := range []bool{false, true} {
		t.Run(fmt.Sprintf("legacy=%t", legacy), func(t *testing.T) {
			t.Parallel()
			b := setup(t, faketalkjs.Faults{}, func(c *Config) { c.SecretKey = "sk_wrong"; c.LegacyAuth = legacy })
			wantError(t, b.client.PutUser(t.Context(), alice), provider.Auth, 401)
		})
	}
}

func TestKeyRotationIsAuth(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{}, nil)
	if err := b.client.PutUser(t.Context(), alice); err != nil {
		t.Fatal(err)
	}
	b.fake.SetSecretKey("sk_rotated")
	wantError(t, b.client.PutUser(t.Context(), alice), provider.Auth, 401)
}

func TestRetryAfterHTTPDateOn503(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", now.Add(90*time.Second).Format(http.TimeFormat))
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	t.Cleanup(srv.Close)
	c := newClient(t, srv.URL, func(c *Config) { c.Clock = func() time.Time { return now } })
	pe := wantProviderError(t, c.PutUser(t.Context(), alice), provider.Retryable, 503)
	if pe.RetryAfter != 90*time.Second {
		t.Fatalf("RetryAfter = %s, want 90s", pe.RetryAfter)
	}
}

func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		value string
		want  time.Duration
	}{
		{"", 0},
		{"0", 0},
		{"5", 5 * time.Second},
		{" 120 ", 2 * time.Minute},
		{"-3", 0},
		{"1.5", 0},
		{"soon", 0},
		{"99999999999999999", time.Duration(9223372036) * time.Second},
		{now.Add(time.Minute).Format(http.TimeFormat), time.Minute},
		{"Sunday, 01-Mar-26 12:00:30 GMT", 30 * time.Second}, // RFC 850
		{"Sun Mar  1 12:00:10 2026", 10 * time.Second},       // asctime
		{now.Add(-time.Minute).Format(http.TimeFormat), 0},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			t.Parallel()
			if got := parseRetryAfter(tt.value, now); got != tt.want {
				t.Fatalf("parseRetryAfter(%q) = %s, want %s", tt.value, got, tt.want)
			}
		})
	}
}

func TestTimeoutIsRetryable(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{Latency: time.Hour}, func(c *Config) { c.Timeout = MinTimeout })
	err := b.client.PutUser(t.Context(), alice)
	wantError(t, err, provider.Retryable, 0)
	// The caller's context is fine: the error must not look like it ended.
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		t.Fatalf("per-request timeout reported as a context error: %v", err)
	}
}

func TestCallerContextEnds(t *testing.T) {
	t.Parallel()
	t.Run("canceled before the call", func(t *testing.T) {
		t.Parallel()
		b := setup(t, faketalkjs.Faults{}, nil)
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if err := b.client.PutUser(ctx, alice); !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	})
	t.Run("canceled during the request", func(t *testing.T) {
		t.Parallel()
		b := setup(t, faketalkjs.Faults{Hang: true}, nil)
		ctx, cancel := context.WithCancel(t.Context())
		time.AfterFunc(50*time.Millisecond, cancel)
		if err := b.client.PutUser(ctx, alice); !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	})
}

// A deadline of the caller's that passes before the API answers is the
// API's failure to answer in time, as the client's own Timeout is: a
// Retryable error saying so, not a context error the caller would take
// for giving up.
func TestCallerDeadlineIsNoAnswer(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{Hang: true}, nil) // Timeout 5s
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	err := b.client.PutUser(ctx, alice)
	wantError(t, err, provider.Retryable, 0)
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		t.Fatalf("the caller's deadline reported as a context error: %v", err)
	}
	if !strings.Contains(err.Error(), "no answer within") {
		t.Fatalf("error %q does not say the API did not answer", err)
	}

	// A deadline already past when the request would go out: nothing is
	// sent, and it is the same failure. (A server of its own: the hung
	// request above may reach its server late.)
	b = setup(t, faketalkjs.Faults{}, nil)
	ctx, cancel = context.WithDeadline(t.Context(), time.Now().Add(-time.Second))
	defer cancel()
	wantError(t, b.client.PutUser(ctx, alice), provider.Retryable, 0)
	if n := len(b.rec.all()); n != 0 {
		t.Fatalf("%d requests sent after the deadline had passed", n)
	}
}

func TestConnectionRefusedIsRetryable(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close() // nothing listens on url any more
	c := newClient(t, url, nil)
	wantError(t, c.PutUser(t.Context(), alice), provider.Retryable, 0)
}

func TestRedirectIsNotFollowed(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{}, nil)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, b.url+r.URL.Path, http.StatusFound)
	}))
	t.Cleanup(srv.Close)
	c := newClient(t, srv.URL, nil)
	err := c.PutUser(t.Context(), alice)
	pe := wantProviderError(t, err, provider.ClassifyStatus(302), 302)
	if !strings.Contains(pe.Error(), "redirect") || len(b.rec.all()) != 0 {
		t.Fatalf("error %v; fake saw %d requests", err, len(b.rec.all()))
	}
}

func TestHostileIDsAreEscaped(t *testing.T) {
	t.Parallel()
	tests := []struct {
		id      string
		escaped string
	}{
		{"a/b?c#d%e f ü", "a%2Fb%3Fc%23d%25e%20f%20%C3%BC"},
		{"%2F", "%252F"},
		{"x+y;z", "x%2By%3Bz"},
		{"a$b&c:d=e@f,g", "a%24b%26c%3Ad%3De%40f%2Cg"},
		{"-_.!~*'()", "-_.!~*'()"},
		{"1 + 1 = 2", "1%20%2B%201%20%3D%202"},
		{"💬", "%F0%9F%92%AC"},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			t.Parallel()
			b := setup(t, faketalkjs.Faults{}, nil)
			ctx := t.Context()
			u := alice
			u.ID = tt.id
			if err := b.client.PutUser(ctx, u); err != nil {
				t.Fatal(err)
			}
			if err := b.client.PutConversation(ctx, provider.Conversation{ID: tt.id, Participants: []string{tt.id}}); err != nil {
				t.Fatal(err)
			}
			m := msg("k")
			m.Sender = tt.id
			if err := b.client.PostMessages(ctx, tt.id, []provider.Message{m}); err != nil {
				t.Fatal(err)
			}

			if _, ok := b.fake.User(tt.id); !ok {
				t.Fatalf("fake has no user %q", tt.id)
			}
			if _, ok := b.fake.Conversation(tt.id); !ok {
				t.Fatalf("fake has no conversation %q", tt.id)
			}
			if got := b.fake.Messages(tt.id); len(got) != 1 || got[0].Sender != tt.id {
				t.Fatalf("messages of %q = %+v", tt.id, got)
			}
			want := []string{
				"/v1/app_test/users/" + tt.escaped,
				"/v1/app_test/conversations/" + tt.escaped,
				"/v1/app_test/conversations/" + tt.escaped + "/messages",
			}
			for i, r := range b.rec.all() {
				if r.requestURI != want[i] {
					t.Fatalf("request %d went to %q, want %q", i, r.requestURI, want[i])
				}
			}
		})
	}
}

// PUT is a merge in TalkJS and a field sent as null is cleared, so fields
// left empty must not be on the wire at all.
func TestEmptyFieldsAreLeftOut(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{}, nil)
	ctx := t.Context()
	// A stored user with every field, then an update naming only the name.
	full := provider.User{ID: "u1", Name: "Alice", Email: []string{"a@x"}, PhotoURL: "https://p",
		WelcomeMessage: "Hi", Role: "buyer", Custom: map[string]string{"tier": "gold"}}
	if err := b.client.PutUser(ctx, full); err != nil {
		t.Fatal(err)
	}
	if err := b.client.PutUser(ctx, provider.User{ID: "u1", Name: "Alicia", Custom: map[string]string{}}); err != nil {
		t.Fatal(err)
	}
	if err := b.client.PutConversation(ctx, provider.Conversation{ID: "c1", Participants: []string{}}); err != nil {
		t.Fatal(err)
	}
	if err := b.client.PostMessages(ctx, "c1", []provider.Message{{Text: "t", Type: provider.SystemMessage, IdempotencyKey: "k"}}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		`{"name":"Alice","email":["a@x"],"photoUrl":"https://p","welcomeMessage":"Hi","role":"buyer","custom":{"tier":"gold"}}`,
		`{"name":"Alicia"}`,
		`{}`,
		`[{"text":"t","type":"SystemMessage","idempotencyKey":"k"}]`,
	}
	reqs := b.rec.all()
	if len(reqs) != len(want) {
		t.Fatalf("fake saw %d requests, want %d", len(reqs), len(want))
	}
	for i, r := range reqs {
		if r.body != want[i] {
			t.Errorf("request %d (%s %s) body\n%s\nwant\n%s", i, r.method, r.requestURI, r.body, want[i])
		}
	}
	u, _ := b.fake.User("u1")
	if u.Name != "Alicia" || len(u.Email) != 1 || u.Role != "buyer" || u.Custom["tier"] != "gold" {
		t.Errorf("stored user %+v: want the name changed and every other field kept", u)
	}
}

func TestBaseURLPathPrefix(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{}, nil)
	mux := http.NewServeMux()
	mux.Handle("/proxy/", http.StripPrefix("/proxy", b.rec.wrap(b.fake)))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	c := newClient(t, srv.URL+"/proxy/", nil)
	if err := c.PutUser(t.Context(), alice); err != nil {
		t.Fatal(err)
	}
	if _, ok := b.fake.User("u1"); !ok {
		t.Fatal("user not stored through the prefixed base URL")
	}
}

func TestRefusedBeforeSending(t *testing.T) {
	t.Parallel()
	eleven := make([]provider.Message, provider.MaxMessagesPerPost+1)
	for i := range eleven {
		eleven[i] = msg(fmt.Sprint("k", i))
	}
	tests := []struct {
		name      string
		call      func(context.Context, *Client) error
		wantInErr string
	}{
		{"no messages", func(ctx context.Context, c *Client) error { return c.PostMessages(ctx, "c1", nil) }, "got 0 messages"},
		{"eleven messages", func(ctx context.Context, c *Client) error { return c.PostMessages(ctx, "c1", eleven) }, "got 11 messages"},
		{"message without idempotency key", func(ctx context.Context, c *Client) error {
			return c.PostMessages(ctx, "c1", []provider.Message{msg("k0"), {Text: "x", Sender: "u1"}})
		}, "message 1 has no IdempotencyKey"},
		{"empty conversation id", func(ctx context.Context, c *Client) error {
			return c.PostMessages(ctx, "", []provider.Message{msg("k")})
		}, "conversation id is required"},
		{"empty user id", func(ctx context.Context, c *Client) error { return c.PutUser(ctx, provider.User{Name: "x"}) }, "user id is required"},
		{"dot-dot conversation id", func(ctx context.Context, c *Client) error {
			return c.PutConversation(ctx, provider.Conversation{ID: ".."})
		}, "cannot be used"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, faketalkjs.Faults{}, nil)
			err := tt.call(t.Context(), b.client)
			wantError(t, err, provider.Permanent, 0)
			if !strings.Contains(err.Error(), tt.wantInErr) {
				t.Fatalf("error %q does not contain %q", err, tt.wantInErr)
			}
			if n := len(b.rec.all()); n != 0 {
				t.Fatalf("%d requests sent", n)
			}
		})
	}
	t.Run("ten messages are sent", func(t *testing.T) {
		t.Parallel()
		b := setup(t, faketalkjs.Faults{}, nil)
		if err := startConversation(t.Context(), b.client); err != nil {
			t.Fatal(err)
		}
		if err := b.client.PostMessages(t.Context(), conv.ID, eleven[:10]); err != nil {
			t.Fatal(err)
		}
	})
}

func TestErrorQuotesShortBodyPrefix(t *testing.T) {
	t.Parallel()
	body := strings.Repeat("é", 150) + "END" // 303 bytes; the cut falls inside a rune
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprint(w, body)
	}))
	t.Cleanup(srv.Close)
	err := newClient(t, srv.URL, nil).PutUser(t.Context(), alice)
	wantError(t, err, provider.Permanent, 400)
	msg := err.Error()
	if strings.Contains(msg, "END") || !strings.Contains(msg, strings.Repeat("é", 100)) || strings.Contains(msg, "\uFFFD") {
		t.Fatalf("error %q: want the first 200 bytes of the body, valid UTF-8", msg)
	}
}

// TestSecretNeverInErrors provokes every kind of failure with a
// distinctive key and checks no error or description contains it.
func TestSecretNeverInErrors(t *testing.T) {
	t.Parallel()
	const secret = "sk_live_DISTINCTIVE_d0e8c7f1a2b3"

	var texts []string
	note := func(err error) {
		if err == nil {
			t.Fatal("want an error")
		}
		texts = append(texts, err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err))
	}

	// The fake knows another key: 401.
	for _, legacy := range []bool{false, true} {
		b := setup(t, faketalkjs.Faults{}, func(c *Config) { c.SecretKey = secret; c.LegacyAuth = legacy })
		note(b.client.PutUser(t.Context(), alice))
	}
	// The fake knows this key and fails in every way it can.
	for _, f := range []faketalkjs.Faults{{FailBefore: 1}, {TooManyRequests: 1}, {DropAfter: 1}, {Down: true}} {
		fake := faketalkjs.New(faketalkjs.Config{AppID: testAppID, SecretKey: secret, Faults: f})
		srv := httptest.NewServer(fake)
		t.Cleanup(srv.Close)
		for _, legacy := range []bool{false, true} {
			c := newClient(t, srv.URL, func(c *Config) { c.SecretKey = secret; c.LegacyAuth = legacy })
			note(c.PutUser(t.Context(), alice))
		}
	}
	// A server that echoes the credentials it received.
	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprintf(w, `{"reason":"bad header %s"}`, r.Header.Get("Authorization"))
	}))
	t.Cleanup(echo.Close)
	for _, legacy := range []bool{false, true} {
		c := newClient(t, echo.URL, func(c *Config) { c.SecretKey = secret; c.LegacyAuth = legacy })
		err := c.PutUser(t.Context(), alice)
		wantError(t, err, provider.Permanent, 400)
		if !strings.Contains(err.Error(), "<redacted>") {
			t.Fatalf("echoed credential not redacted: %v", err)
		}
		note(err)
	}
	// Timeouts, refused connections and invalid configurations.
	slow := faketalkjs.New(faketalkjs.Config{AppID: testAppID, SecretKey: secret, Faults: faketalkjs.Faults{Latency: time.Hour}})
	slowSrv := httptest.NewServer(slow)
	t.Cleanup(slowSrv.Close)
	c := newClient(t, slowSrv.URL, func(c *Config) { c.SecretKey = secret; c.Timeout = MinTimeout })
	note(c.PutUser(t.Context(), alice))
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	c = newClient(t, closed.URL, func(c *Config) { c.SecretKey = secret })
	note(c.PutUser(t.Context(), alice))
	for _, cfg := range []Config{
		{SecretKey: secret},
		{AppID: "a", SecretKey: secret, BaseURL: "ftp://" + secret},
		{AppID: "a", SecretKey: secret, BaseURL: "https://user:" + secret + "@host"},
		{AppID: "a", SecretKey: secret, BaseURL: "http://[" + secret},
		{AppID: "a", SecretKey: secret, Timeout: -1},
	} {
		_, err := New(cfg)
		note(err)
	}

	// Descriptions of the configuration and the client.
	cfg := Config{AppID: testAppID, SecretKey: secret}
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("config", "talkjs", cfg)
	texts = append(texts, fmt.Sprint(cfg), fmt.Sprintf("%+v", cfg), fmt.Sprintf("%#v", cfg), logged.String(),
		fmt.Sprint(c), fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c))

	for _, s := range texts {
		if strings.Contains(s, secret) {
			t.Fatalf("secret key leaked in %q", s)
		}
	}
}

func TestNewValidatesConfig(t *testing.T) {
	t.Parallel()
	valid := Config{AppID: "a", SecretKey: "s"}
	tests := []struct {
		name    string
		edit    func(*Config)
		wantErr string
	}{
		{"defaults", func(*Config) {}, ""},
		{"all fields", func(c *Config) {
			c.BaseURL, c.LegacyAuth, c.Timeout, c.MaxConns, c.RateLimit, c.RateBurst, c.UserAgent =
				"http://localhost:8090/prefix", true, time.Second, 4, 2.5, 3, "ua"
		}, ""},
		{"missing app id", func(c *Config) { c.AppID = "" }, "talkjs: AppID is required"},
		{"missing secret key", func(c *Config) { c.SecretKey = "" }, "talkjs: SecretKey is required"},
		{"negative timeout", func(c *Config) { c.Timeout = -time.Second }, "Timeout"},
		{"negative max conns", func(c *Config) { c.MaxConns = -1 }, "MaxConns"},
		{"negative rate limit", func(c *Config) { c.RateLimit = -1 }, "RateLimit"},
		{"negative burst", func(c *Config) { c.RateBurst = -1 }, "RateBurst"},
		{"relative base URL", func(c *Config) { c.BaseURL = "api.talkjs.com" }, "BaseURL"},
		{"base URL without host", func(c *Config) { c.BaseURL = "https://" }, "BaseURL"},
		{"base URL with query", func(c *Config) { c.BaseURL = "https://h/?x=1" }, "BaseURL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := valid
			tt.edit(&cfg)
			c, err := New(cfg)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("New: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("New error = %v, want one containing %q", err, tt.wantErr)
			}
			if c != nil {
				_ = c.Close()
			}
		})
	}
}

func TestClientRateLimit(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{}, func(c *Config) { c.RateLimit = 0.01; c.RateBurst = 1 })
	if err := b.client.PutUser(t.Context(), alice); err != nil {
		t.Fatal(err)
	}
	// The next slot is 100s away: a caller with a short deadline is told at
	// once instead of waiting for nothing, with Status 0 (nothing was sent).
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	err := b.client.PutUser(ctx, alice)
	pe := wantProviderError(t, err, provider.RateLimited, 0)
	if pe.RetryAfter < 90*time.Second {
		t.Fatalf("RetryAfter = %s, want about 100s", pe.RetryAfter)
	}
	// A caller without a deadline waits until it gives up.
	ctx, cancel = context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- b.client.PutUser(ctx, alice) }()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if n := len(b.rec.all()); n != 1 {
		t.Fatalf("%d requests reached the server, want 1", n)
	}

	// A slot that comes before the deadline but would leave the request
	// less than half its Timeout is refused too: a request is not cut
	// short for having waited its turn.
	// A slot every 2s: after the token is taken, the next one is 2s less
	// the time that call took away. With a deadline 2s + Timeout/4 away it
	// comes before the deadline but leaves the request Timeout/4 plus that
	// time, under half the Timeout however slow the machine (up to
	// Timeout/4).
	b.client.SetRateLimit(0.5, 1)
	if err := b.client.PutUser(t.Context(), alice); err != nil { // takes the token
		t.Fatal(err)
	}
	timeout := b.client.Timeout()
	ctx, cancel = context.WithTimeout(t.Context(), 2*time.Second+timeout/4)
	defer cancel()
	wantError(t, b.client.PutUser(ctx, alice), provider.RateLimited, 0)
	ctx, cancel = context.WithTimeout(t.Context(), 2*time.Second+timeout/2+time.Second)
	defer cancel()
	if err := b.client.PutUser(ctx, alice); err != nil {
		t.Fatalf("a slot leaving more than half the Timeout was refused: %v", err)
	}

	b.client.SetRateLimit(0, 0) // unlimited
	for range 5 {
		if err := b.client.PutUser(t.Context(), alice); err != nil {
			t.Fatal(err)
		}
	}
}

func TestConcurrentCalls(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{}, func(c *Config) { c.MaxConns = 4 })
	if err := startConversation(t.Context(), b.client); err != nil {
		t.Fatal(err)
	}
	const workers, calls = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers*calls)
	for w := range workers {
		wg.Go(func() {
			for i := range calls {
				key := fmt.Sprintf("w%d-%d", w, i)
				if err := b.client.PostMessages(t.Context(), conv.ID, []provider.Message{msg(key)}); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Go(func() {
		for i := range calls {
			b.client.SetRateLimit(float64(1000+i), 100)
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := len(b.fake.Messages(conv.ID)); n != 2+workers*calls {
		t.Fatalf("%d messages stored, want %d", n, 2+workers*calls)
	}
}

// Requests that wait for the client-side rate limit are counted, with
// their wait, for the relay's metrics; refused and unhindered ones are not.
func TestRateLimitWaitsCounted(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{}, func(c *Config) { c.RateLimit = 2; c.RateBurst = 1 })
	if n, d := b.client.RateLimitWaits(); n != 0 || d != 0 {
		t.Fatalf("waits before any request = %d, %s", n, d)
	}
	for range 3 { // the first takes the token, the next two wait up to 500ms each
		if err := b.client.PutUser(t.Context(), alice); err != nil {
			t.Fatal(err)
		}
	}
	n, d := b.client.RateLimitWaits()
	if n != 2 || d < 500*time.Millisecond || d > 2*time.Second {
		t.Fatalf("waits = %d totalling %s, want 2 totalling about 1s", n, d)
	}
}

// Validate takes a Config as given: a zero Timeout or MaxConns is refused
// (New gives them their defaults), and every error names its field.
func TestValidateAsGiven(t *testing.T) {
	t.Parallel()
	full := Config{AppID: "a", SecretKey: "s", BaseURL: DefaultBaseURL, Timeout: MinTimeout, MaxConns: 1}
	if err := full.Validate(); err != nil {
		t.Fatalf("full config: %v", err)
	}
	var fields []string
	var joined interface{ Unwrap() []error }
	if err := (Config{AppID: " ", SecretKey: "s", BaseURL: DefaultBaseURL}).Validate(); !errors.As(err, &joined) {
		t.Fatalf("Validate = %v, want joined errors", err)
	}
	for _, err := range joined.Unwrap() {
		var ce *ConfigError
		if !errors.As(err, &ce) {
			t.Fatalf("%v is not a *ConfigError", err)
		}
		fields = append(fields, ce.Field)
	}
	if want := []string{"AppID", "Timeout", "MaxConns"}; !slices.Equal(fields, want) {
		t.Errorf("fields %v, want %v", fields, want)
	}
}
