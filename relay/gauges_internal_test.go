package relay

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestGaugeReaderService(t *testing.T) {
	t.Parallel()
	r, pool := newServiceRelay(t)
	insertIntents(t, pool, 3)
	// It reads the gauges as it starts, then every gaugeInterval.
	startService(t, r.gauges)
	if err := r.gauges.Start(t.Context()); err == nil {
		t.Fatal("second Start succeeded")
	}
	waitFor(t, 10*time.Second, "3 pending intents in the gauge", func() bool {
		return testutil.ToFloat64(r.metrics.intents.WithLabelValues("pending")) == 3
	})
	stopService(t, r.gauges)
}
