package relay_test

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/provider/faketalkjs"
)

// Relays share OUTBOX_RATE_LIMIT, an adaptive limit's ceiling: a relay
// joining takes its share at once, and one stopping gracefully gives it
// back at once, not at the next heartbeat (every 10 s here).
func TestAdaptiveShareFollowsRelaysAtOnce(t *testing.T) {
	t.Parallel()
	b := setup(t, faketalkjs.Faults{})
	ceiling := func(reg *prometheus.Registry) float64 {
		return relaytest.MetricValue(t, reg, "outbox_relay_rate_limit_ceiling")
	}
	cfg1 := adaptiveConfig("share-1")
	cfg1.Lease, cfg1.RateLimit = 30*time.Second, 100
	reg1 := cfg1.Registerer.(*prometheus.Registry)
	b.startAdaptive(t, cfg1)
	if c := ceiling(reg1); c != 100 {
		t.Fatalf("alone, the ceiling is %v, want 100", c)
	}
	cfg2 := adaptiveConfig("share-2")
	cfg2.Lease, cfg2.RateLimit = 30*time.Second, 100
	r2 := b.startAdaptive(t, cfg2)
	waitFor(t, 5*time.Second, "the first relay to share the ceiling", func() bool { return ceiling(reg1) == 50 })
	r2.Stop()
	waitFor(t, 5*time.Second, "the first relay to take the whole ceiling back", func() bool { return ceiling(reg1) == 100 })
}
