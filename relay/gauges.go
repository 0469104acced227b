package relay

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// gaugeInterval is how often a relay reads the queue's size and lag from
// the database for its gauges. Each relay reads them (they describe the
// database, so every relay exports the same values: aggregate with max).
const gaugeInterval = 10 * time.Second

// readGauges counts pending, delivering and dead intents and reads the
// lag. Each count walks a partial index (intents_active_conversation_idx
// for pending, intents_delivering_idx, intents_dead_idx), never the done
// history.
const readGauges = `
SELECT l.pending, l.delivering,
       (SELECT count(*) FROM outbox.intents WHERE state = 'dead') AS dead,
       l.lag_s
  FROM outbox.lag l`

// gaugeReader is the service that reads the queue gauges at start and
// every gaugeInterval.
type gaugeReader struct {
	r *Relay
	startStop
}

func newGaugeReader(r *Relay) *gaugeReader {
	return &gaugeReader{r: r, startStop: startStop{name: "gauge reader"}}
}

// Start reads in the background until Stop.
func (g *gaugeReader) Start(ctx context.Context) error { return g.start(ctx, g.loop) }

// Stop waits for the read under way (bounded) and stops.
func (g *gaugeReader) Stop(ctx context.Context) error { return g.stop(ctx) }

func (g *gaugeReader) loop(ctx context.Context) {
	t := time.NewTicker(gaugeInterval)
	defer t.Stop()
	g.r.refreshGauges(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			opCtx, cancel := context.WithTimeout(ctx, gaugeInterval)
			g.r.refreshGauges(opCtx)
			cancel()
		}
	}
}

// refreshGauges reads the queue gauges from the database.
func (r *Relay) refreshGauges(ctx context.Context) {
	// The relay's sessions cut statements at a quarter of the lease,
	// sized for its lock paths; counting a large backlog can take longer,
	// and this read locks no row. It gets the interval instead.
	g, err := r.q.readGauges(ctx, gaugeInterval)
	if err != nil {
		if ctx.Err() == nil {
			r.setDB(false, "read_gauges", err)
		}
		return
	}
	r.metrics.intents.WithLabelValues(string(StatePending)).Set(float64(g.Pending))
	r.metrics.intents.WithLabelValues(string(StateDelivering)).Set(float64(g.Delivering))
	r.metrics.intents.WithLabelValues(string(StateDead)).Set(float64(g.Dead))
	r.metrics.lag.Set(g.LagS)
}

// waitRetryAfter holds a call until a 429's Retry-After has passed, and
// counts the calls it held.
func (r *Relay) waitRetryAfter(ctx context.Context) error {
	held, err := r.gate.waitCall(ctx)
	if held > 0 {
		r.metrics.retryAfterWait.Inc()
		r.metrics.retryAfterSecs.Add(held.Seconds())
	}
	return err
}

// slotWaiter is implemented by providers with a client-side rate limit
// (provider/talkjs.Client).
type slotWaiter interface {
	RateLimitWaits() (waits int64, total time.Duration)
}

// registerProviderMetrics exports the provider's rate-limit waits, when it
// counts them.
func registerProviderMetrics(reg prometheus.Registerer, p any) {
	sw, ok := p.(slotWaiter)
	if !ok || reg == nil {
		return
	}
	reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "outbox_relay", Name: "rate_limit_waits_total",
			Help: "Calls that waited for the client-side rate limit (OUTBOX_RATE_LIMIT).",
		}, func() float64 { n, _ := sw.RateLimitWaits(); return float64(n) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "outbox_relay", Name: "rate_limit_wait_seconds_total",
			Help: "Time calls spent waiting for the client-side rate limit.",
		}, func() float64 { _, d := sw.RateLimitWaits(); return d.Seconds() }),
	)
}
