package relay

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// A statement cancelled by Stop is not a database failure: a normal stop
// logs no outage and counts no database error; the same cancellation
// while running, and any other error while stopping, still count.
func TestUnitStopCancellationIsNotADatabaseError(t *testing.T) {
	for _, tc := range []struct {
		name     string
		stopping bool
		err      error
		counted  float64
	}{
		{"cancelled by Stop", true, context.Canceled, 0},
		{"cancelled by Stop, wrapped", true, errors.Join(errors.New("heartbeat"), context.Canceled), 0},
		{"cancelled while running", false, context.Canceled, 1},
		{"a real failure while stopping", true, errors.New("connection refused"), 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &Relay{metrics: newMetrics(prometheus.NewRegistry()), log: slog.New(slog.DiscardHandler), gate: newGate(5, time.Now, nil),
				control: &controlReader{}, listener: &listener{}}
			r.dbOK.Store(true)
			r.stopping.Store(tc.stopping)
			r.setDB(false, "heartbeat", tc.err)
			if got := testutil.ToFloat64(r.metrics.dbErrors.WithLabelValues("heartbeat")); got != tc.counted {
				t.Errorf("database errors counted: %v, want %v", got, tc.counted)
			}
			if r.dbOK.Load() != (tc.counted == 0) {
				t.Errorf("database ok = %v after %v", r.dbOK.Load(), tc.err)
			}
		})
	}
}
