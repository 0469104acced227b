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
// every gaugeInterval. It owns no state: it reads, and sets the gauges.
type gaugeReader struct {
	serviceEnv
	cfg gaugeReaderConfig
	startStop
}

func newGaugeReader(env serviceEnv, cfg gaugeReaderConfig) *gaugeReader {
	return &gaugeReader{serviceEnv: env, cfg: cfg, startStop: startStop{name: "gauge reader"}}
}

// Start reads in the background until Stop.
func (g *gaugeReader) Start(ctx context.Context) error { return g.start(ctx, g.loop) }

// Stop waits for the read under way (bounded) and stops.
func (g *gaugeReader) Stop(ctx context.Context) error { return g.stop(ctx) }

func (g *gaugeReader) loop(ctx context.Context) {
	t := time.NewTicker(g.cfg.Interval)
	defer t.Stop()
	g.refresh(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			opCtx, cancel := context.WithTimeout(ctx, g.cfg.Interval)
			g.refresh(opCtx)
			cancel()
		}
	}
}

// refresh reads the queue gauges from the database.
func (g *gaugeReader) refresh(ctx context.Context) {
	// The relay's sessions cut statements at a quarter of the lease,
	// sized for its lock paths; counting a large backlog can take longer,
	// and this read locks no row. It gets the interval instead.
	v, err := g.q.readGauges(ctx, g.cfg.Interval)
	if err != nil {
		if ctx.Err() == nil {
			g.setDB(false, "read_gauges", err)
		}
		return
	}
	g.metrics.intents.WithLabelValues(string(StatePending)).Set(float64(v.Pending))
	g.metrics.intents.WithLabelValues(string(StateDelivering)).Set(float64(v.Delivering))
	g.metrics.intents.WithLabelValues(string(StateDead)).Set(float64(v.Dead))
	g.metrics.lag.Set(v.LagS)
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
