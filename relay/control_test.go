package relay_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
	"github.com/outbox-relay/outbox-relay/relay"
)

// leaseTokens maps every intent to its lease token, which every claim
// increments.
func leaseTokens(t testing.TB, b *bundle) map[int64]int64 {
	t.Helper()
	rows, err := b.pool.Query(t.Context(), `SELECT id, lease_token FROM outbox.intents`)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int64]int64{}
	var id, token int64
	if _, err := pgx.ForEachRow(rows, []any{&id, &token}, func() error { out[id] = token; return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

// An operator's pause holds two relays at once: after Pause returns
// neither claims an intent, though both keep running claims; deliveries
// under way finish; intents inserted while paused stay pending; both say
// so in Health, the paused metric and the status. Resume lets both claim
// again without waiting for a poll.
func TestOperatorPauseHoldsEveryRelay(t *testing.T) {
	t.Parallel()
	// Latency keeps deliveries under way at the moment of the pause.
	b := setup(t, faketalkjs.Faults{Latency: 150 * time.Millisecond})
	ctx := t.Context()
	type member struct {
		r   *relay.Relay
		reg *prometheus.Registry
	}
	var relays []member
	for i := range 2 {
		cfg := testConfig(fmt.Sprintf("pause-%d", i))
		cfg.Concurrency, cfg.BatchSize = 5, 5
		// Only a notification or a freed slot wakes a relay: the resume
		// must not depend on a poll.
		cfg.PollInterval = time.Minute
		cfg.Registerer = prometheus.NewRegistry()
		relays = append(relays, member{b.startRelay(t, cfg, testSecret), cfg.Registerer.(*prometheus.Registry)})
	}
	var before []outbox.Intent
	for i := range 40 {
		before = append(before, orderIntent(fmt.Sprintf("pause-conv-%d", i%20), i))
	}
	b.insertSQL(t, before)
	waitFor(t, 20*time.Second, "deliveries under way on both relays", func() bool {
		return relays[0].r.Health().InFlight > 0 && relays[1].r.Health().InFlight > 0
	})

	p, started, err := relay.Pause(ctx, b.pool, "incident 42")
	if err != nil {
		t.Fatal(err)
	}
	if !started || p.Reason != "incident 42" || p.By == "" {
		t.Fatalf("Pause = %+v, started %v; want a new pause with its reason and role", p, started)
	}
	tokens := leaseTokens(t, b)
	var inFlight []int64
	if err := b.pool.QueryRow(ctx, `SELECT array_agg(id) FROM outbox.intents WHERE state = 'delivering'`).Scan(&inFlight); err != nil {
		t.Fatal(err)
	}
	if len(inFlight) == 0 {
		t.Fatal("nothing was being delivered at the pause: the test paused too late")
	}
	if _, again, err := relay.Pause(ctx, b.pool, "other"); err != nil || again {
		t.Fatalf("a second Pause: started %v, err %v; want the pause left as it was", again, err)
	}

	during := b.insertSQL(t, []outbox.Intent{orderIntent("pause-new-a", 100), orderIntent("pause-new-b", 101)})
	waitFor(t, 20*time.Second, "both relays to report the pause and drain", func() bool {
		if b.counts(t)["delivering"] != 0 {
			return false
		}
		for _, m := range relays {
			h := m.r.Health()
			if h.Ready || h.OperatorPause == nil || h.OperatorPause.Reason != "incident 42" || h.InFlight != 0 {
				return false
			}
		}
		return true
	})
	for _, m := range relays {
		if v := relaytest.MetricValue(t, m.reg, "outbox_relay_paused", "reason", "operator"); v != 1 {
			t.Errorf("outbox_relay_paused{reason=operator} = %v while paused, want 1", v)
		}
	}
	// Both relays keep claiming (each notification wakes them) and get
	// nothing.
	for range 3 {
		counts := make([]uint64, len(relays))
		for i, m := range relays {
			counts[i] = relaytest.HistogramCount(t, m.reg, "outbox_relay_claim_duration_seconds")
		}
		if _, err := b.pool.Exec(ctx, `SELECT pg_notify('outbox_intents', '')`); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "both relays to run a claim", func() bool {
			for i, m := range relays {
				if relaytest.HistogramCount(t, m.reg, "outbox_relay_claim_duration_seconds") <= counts[i] {
					return false
				}
			}
			return true
		})
	}
	after := leaseTokens(t, b)
	for id, tok := range after {
		if tok != tokens[id] {
			t.Errorf("intent %d claimed while paused (lease token %d -> %d)", id, tokens[id], tok)
		}
	}
	var unfinished int
	if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM outbox.intents WHERE id = ANY($1) AND state <> 'done'`, inFlight).Scan(&unfinished); err != nil {
		t.Fatal(err)
	}
	if unfinished != 0 {
		rows, _ := b.pool.Query(ctx, `SELECT format('%s %s %s %s', id, state, attempts, last_error) FROM outbox.intents WHERE id = ANY($1) AND state <> 'done'`, inFlight)
		left, _ := pgx.CollectRows(rows, pgx.RowTo[string])
		t.Errorf("%d of the %d intents under way at the pause did not finish: %q", unfinished, len(inFlight), left)
	}
	var pending int
	if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM outbox.intents WHERE id = ANY($1) AND state = 'pending' AND attempts = 0`, during).Scan(&pending); err != nil {
		t.Fatal(err)
	}
	if pending != len(during) {
		t.Errorf("%d of %d intents inserted while paused are untouched and pending", pending, len(during))
	}
	st, err := relay.ReadStatus(ctx, b.pool, 0)
	if err != nil {
		t.Fatal(err)
	}
	if st.Paused == nil || st.Paused.Reason != "incident 42" || !st.Paused.Since.Equal(p.Since) {
		t.Errorf("status pause = %+v, want %+v", st.Paused, p)
	}

	resumed, err := relay.Resume(ctx, b.pool)
	if err != nil || !resumed {
		t.Fatalf("Resume = %v, %v", resumed, err)
	}
	// Well within the minute-long poll.
	c := b.waitSettled(t, 30*time.Second)
	if c["done"] != len(before)+len(during) {
		t.Fatalf("states after resume = %v, want all done", c)
	}
	b.checkDelivered(t, append(before, orderIntent("pause-new-a", 100), orderIntent("pause-new-b", 101)))
	waitFor(t, 5*time.Second, "both relays to report the resume", func() bool {
		for _, m := range relays {
			if h := m.r.Health(); !h.Ready || h.OperatorPause != nil || relaytest.MetricValue(t, m.reg, "outbox_relay_paused", "reason", "operator") != 0 {
				return false
			}
		}
		return true
	})
	if again, err := relay.Resume(ctx, b.pool); err != nil || again {
		t.Errorf("a second Resume = %v, %v; want nothing to resume", again, err)
	}
}
