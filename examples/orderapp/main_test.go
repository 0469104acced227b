package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
)

// relayBinary is outbox-relay, built once for the package.
var relayBinary string

func TestMain(m *testing.M) {
	bin, remove, err := relaytest.BuildRelay("../../cmd/outbox-relay")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	relayBinary = bin
	code := pgtest.Run(m)
	remove()
	os.Exit(code)
}

func postOrder(t *testing.T, url, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, url+"/orders", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return resp.StatusCode, b.String()
}

// An order placed over HTTP reaches TalkJS through a real relay: the
// conversation, both users and the system message, once; an order whose
// intent is invalid is refused whole, leaving neither order nor intent.
func TestOrderToConversation(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dbURL := pgtest.NewDatabase(t)
	pool := pgtest.Pool(t, dbURL)
	if _, err := pool.Exec(ctx, schema); err != nil {
		t.Fatal(err)
	}
	app := httptest.NewServer(newHandler(pool))
	t.Cleanup(app.Close)

	const secret = "sk_test_orderapp"
	fake := faketalkjs.New(faketalkjs.Config{AppID: "shop", SecretKey: secret})
	api := httptest.NewServer(fake)
	t.Cleanup(api.Close)
	relay := exec.CommandContext(t.Context(), relayBinary, "run")
	relay.Env = append(os.Environ(), "DATABASE_URL="+dbURL, "TALKJS_APP_ID=shop", "TALKJS_SECRET_KEY="+secret,
		"TALKJS_BASE_URL="+api.URL, "OUTBOX_MIGRATE=false", "OUTBOX_LOG_LEVEL=warn")
	var logs relaytest.SyncBuffer
	relay.Stdout, relay.Stderr = &logs, &logs
	if err := relay.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = relay.Process.Kill()
		_ = relay.Wait()
		if t.Failed() {
			t.Logf("relay log:\n%s", logs.String())
		}
	})

	code, body := postOrder(t, app.URL, `{"buyer":{"id":"u1","name":"Alice","email":"alice@example.com"},
		"seller":{"id":"u2","name":"Bob","email":"bob@example.com"},"item":"A blue scarf"}`)
	if code != http.StatusCreated {
		t.Fatalf("POST /orders = %d %s", code, body)
	}
	var placed orderResponse
	if err := json.Unmarshal([]byte(body), &placed); err != nil {
		t.Fatal(err)
	}

	// The buyer has no email: the intent is invalid, so the order is not
	// placed either.
	code, body = postOrder(t, app.URL, `{"buyer":{"id":"u3","name":"Carol"},
		"seller":{"id":"u2","name":"Bob","email":"bob@example.com"},"item":"A red hat"}`)
	if code != http.StatusBadRequest || !strings.Contains(body, "users[0].email") {
		t.Fatalf("invalid order: %d %q, want 400 naming users[0].email", code, body)
	}
	var orders int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM orders`).Scan(&orders); err != nil {
		t.Fatal(err)
	}
	if orders != 1 {
		t.Fatalf("%d orders stored, want only the valid one", orders)
	}

	relaytest.WaitFor(t, 30*time.Second, "the order's intent to be done", func() bool {
		var state string
		err := pool.QueryRow(ctx, `SELECT state FROM outbox.intents WHERE id = $1`, placed.IntentID).Scan(&state)
		return err == nil && state == "done"
	})
	c, ok := fake.Conversation(placed.ConversationID)
	if !ok || fmt.Sprint(c.Participants) != "[u1 u2]" || c.Subject != fmt.Sprintf("Order #%d", placed.OrderID) {
		t.Fatalf("conversation %q = %+v (found %t)", placed.ConversationID, c, ok)
	}
	msgs := fake.Messages(placed.ConversationID)
	if len(msgs) != 1 || msgs[0].Text != fmt.Sprintf("Order #%d placed: A blue scarf", placed.OrderID) {
		t.Fatalf("messages = %+v, want the one system message", msgs)
	}
	for _, id := range []string{"u1", "u2"} {
		if _, ok := fake.User(id); !ok {
			t.Errorf("user %s not synchronised", id)
		}
	}
	var intents int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM outbox.intents`).Scan(&intents); err != nil {
		t.Fatal(err)
	}
	if intents != 1 {
		t.Fatalf("%d intents, want 1", intents)
	}
}
