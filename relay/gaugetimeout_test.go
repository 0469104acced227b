package relay_test

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
	"github.com/outbox-relay/outbox-relay/relay"
)

// The queue gauges count whole states, which takes time on a large
// backlog (a view slowed to 0.5 s stands in for one here). At the
// shortest lease the relay's sessions cut statements at 250 ms: the gauges
// must still be read, not fail every time and mark the database down.
func TestGaugesReadPastTheRelaysStatementTimeout(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	ctx := t.Context()
	if _, err := b.pool.Exec(ctx, `
INSERT INTO outbox.intents (payload, state)
SELECT jsonb_build_object('conversation', jsonb_build_object('id', 'g' || g),
                          'messages', jsonb_build_array(jsonb_build_object('type', 'SystemMessage', 'text', 'x'))),
       'dead'
  FROM generate_series(1, 2) g`); err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(ctx, `
CREATE FUNCTION public.slow() RETURNS boolean LANGUAGE sql VOLATILE AS $$ SELECT true FROM pg_sleep(0.5) $$;
ALTER VIEW outbox.lag RENAME TO lag_fast;
CREATE VIEW outbox.lag AS SELECT * FROM outbox.lag_fast WHERE public.slow();`); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	cfg := withLogs(testConfig("gauges"), b)
	cfg.Lease = relay.MinLease
	cfg.Registerer = reg
	r, err := relay.New(relayPool(t, b.dbURL, cfg), leaseClient(t, b, cfg.Lease), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	// The first read is at start; the next comes 10 s later.
	waitFor(t, 8*time.Second, "the dead gauge to read 2", func() bool {
		return relaytest.MetricValue(t, reg, "outbox_relay_intents", "state", "dead") == 2
	})
	if logged(b, "database unavailable", "read_gauges") {
		t.Error("a slow gauge read marked the database unavailable")
	}
}
