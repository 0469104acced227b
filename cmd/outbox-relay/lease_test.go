package main

import (
	"fmt"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
)

// The documented minimum OUTBOX_LEASE, with TALKJS_TIMEOUT left to its
// default (half the lease), delivers every intent.
func TestRunAtMinimumLease(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.NewDatabase(t)
	pool := pgtest.Pool(t, dbURL)
	const secret = "sk_test_min_lease"
	fake := faketalkjs.New(faketalkjs.Config{AppID: "app", SecretKey: secret})
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	var intents []outbox.Intent
	for i := range 200 {
		intents = append(intents, relaytest.OrderIntent(fmt.Sprintf("conv-%d", i%50), i))
	}
	relaytest.InsertSQL(t, pool, intents)
	startProcess(t, "min-lease", "DATABASE_URL="+dbURL, "TALKJS_APP_ID=app", "TALKJS_SECRET_KEY="+secret,
		"TALKJS_BASE_URL="+srv.URL, "OUTBOX_LEASE=1s", "OUTBOX_RETRY_BASE=50ms")
	c := relaytest.WaitSettled(t, pool, 60*time.Second)
	if c["done"] != len(intents) {
		t.Fatalf("states = %v, want %d done", c, len(intents))
	}
	relaytest.CheckDelivered(t, fake, intents)
}
