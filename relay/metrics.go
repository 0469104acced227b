package relay

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/outbox-relay/outbox-relay/provider/ratecontrol"
)

// metrics are the relay's Prometheus collectors. Labels carry no ids and no
// secrets, so cardinality stays fixed.
type metrics struct {
	claimed        prometheus.Counter
	claimDuration  prometheus.Histogram
	completed      *prometheus.CounterVec // by resulting state/outcome
	fenced         prometheus.Counter
	dropped        prometheus.Counter
	leasesExpired  prometheus.Counter
	calls          *prometheus.CounterVec   // by step and outcome
	callDuration   *prometheus.HistogramVec // by step
	inFlight       prometheus.Gauge
	ready          prometheus.Gauge
	paused         *prometheus.GaugeVec // by reason
	liveRelays     prometheus.Gauge
	notifications  prometheus.Counter
	listenerErrors prometheus.Counter
	dbErrors       *prometheus.CounterVec // by operation
	retained       *prometheus.CounterVec // rows deleted by retention, by kind

	intents        *prometheus.GaugeVec // by state, from the database (gauges.go)
	lag            prometheus.Gauge
	latency        prometheus.Histogram   // insert to done
	claimBatch     prometheus.Histogram   // intents per claim
	wakeups        *prometheus.CounterVec // by source
	retryAfterWait prometheus.Counter     // calls held for a 429's Retry-After
	retryAfterSecs prometheus.Counter
	warnings       *prometheus.CounterVec // rate-limited warnings, by class (logwarn.go)
	rate           prometheus.Gauge       // the adaptive rate limit (rate.go)
	rateCeiling    prometheus.Gauge
	rateCuts       *prometheus.CounterVec // by cause
	rateBackground prometheus.Gauge       // share of 429s the adaptive limit learnt as not its rate's
}

// newMetrics creates the collectors, registered with reg unless it is nil.
func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	m := &metrics{}
	for _, d := range append(m.deliveryDefs(), m.stateDefs()...) {
		d.create(f)
	}
	for _, s := range []State{StatePending, StateDelivering, StateDead} {
		m.intents.WithLabelValues(string(s))
	}
	for _, s := range []string{"notify", "poll", "internal"} {
		m.wakeups.WithLabelValues(s)
	}
	// Every reason present from the start, so an alert sees 0, not nothing.
	for _, reason := range []string{pauseAuth, pauseBreaker, pauseOperator} {
		m.paused.WithLabelValues(reason)
	}
	for _, cause := range []string{ratecontrol.CauseRateLimited, ratecontrol.CauseSlow} {
		m.rateCuts.WithLabelValues(cause)
	}
	return m
}

// metricDef describes one collector of the outbox_relay namespace; dst
// points at its field of metrics, whose type says what to create.
type metricDef struct {
	dst     any
	name    string
	help    string
	labels  []string  // for a vector
	buckets []float64 // for a histogram
}

// create makes the collector and stores it in its field.
func (d metricDef) create(f promauto.Factory) {
	const ns = "outbox_relay"
	switch dst := d.dst.(type) {
	case *prometheus.Counter:
		*dst = f.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: d.name, Help: d.help})
	case **prometheus.CounterVec:
		*dst = f.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: d.name, Help: d.help}, d.labels)
	case *prometheus.Gauge:
		*dst = f.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: d.name, Help: d.help})
	case **prometheus.GaugeVec:
		*dst = f.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: d.name, Help: d.help}, d.labels)
	case *prometheus.Histogram:
		*dst = f.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: d.name, Help: d.help, Buckets: d.buckets})
	case **prometheus.HistogramVec:
		*dst = f.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: d.name, Help: d.help, Buckets: d.buckets}, d.labels)
	default:
		panic(fmt.Sprintf("metric %s: unknown collector type %T", d.name, d.dst))
	}
}

// deliveryDefs are the collectors of claims, calls and completions.
func (m *metrics) deliveryDefs() []metricDef {
	return []metricDef{
		{dst: &m.claimed, name: "intents_claimed_total",
			help: "Intents leased for delivery."},
		{dst: &m.claimDuration, name: "claim_duration_seconds", buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
			help: "Time to claim one batch of intents."},
		{dst: &m.completed, name: "intents_completed_total", labels: []string{"outcome"},
			help: "Delivery attempts finished, by outcome (done, dead, retry, release)."},
		{dst: &m.fenced, name: "completions_fenced_total",
			help: "Results discarded because the intent's lease had passed to another relay."},
		{dst: &m.dropped, name: "completions_dropped_total",
			help: "Results the database refused to record; their intents are delivered again after the lease."},
		{dst: &m.leasesExpired, name: "leases_expired_total",
			help: "Intents taken back from a relay whose lease ran out."},
		{dst: &m.calls, name: "api_calls_total", labels: []string{"step", "outcome"},
			help: "TalkJS calls, by step (users: a batch users PUT; user, conversation, messages) and outcome."},
		{dst: &m.callDuration, name: "api_call_duration_seconds", labels: []string{"step"}, buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
			help: "TalkJS call latency by step."},
		{dst: &m.inFlight, name: "intents_in_flight",
			help: "Intents being delivered now."},
		{dst: &m.latency, name: "delivery_latency_seconds", buckets: prometheus.ExponentialBuckets(0.05, 2, 16),
			help: "Time from an intent's insert to its delivery (done), on the database clock."},
		{dst: &m.claimBatch, name: "claim_batch_size", buckets: []float64{0, 1, 2, 5, 10, 20, 50, 100, 200, 500},
			help: "Intents leased by one claim statement (0: it found nothing)."},
		{dst: &m.retryAfterWait, name: "retry_after_waits_total",
			help: "Calls held back because TalkJS answered 429 with Retry-After."},
		{dst: &m.retryAfterSecs, name: "retry_after_wait_seconds_total",
			help: "Time calls spent held back by a 429's Retry-After."},
		{dst: &m.warnings, name: "retryable_failures_total", labels: []string{"class"},
			help: "Attempts that failed retryably (they back off and try again), by class."},
	}
}

// stateDefs are the collectors of the relay's and the queue's state.
func (m *metrics) stateDefs() []metricDef {
	return []metricDef{
		{dst: &m.ready, name: "ready",
			help: "1 when the relay can deliver (database reachable, credentials accepted)."},
		{dst: &m.paused, name: "paused", labels: []string{"reason"},
			help: "1 while delivery is paused, by reason (auth, breaker, operator)."},
		{dst: &m.rate, name: "rate_limit",
			help: "Requests per second this relay allows itself: the rate its adaptive limit found, or its share of a fixed OUTBOX_RATE_LIMIT (0 when it has no limit)."},
		{dst: &m.rateCeiling, name: "rate_limit_ceiling",
			help: "This relay's share of OUTBOX_RATE_LIMIT, the most its adaptive limit may reach (0: no ceiling)."},
		{dst: &m.rateBackground, name: "rate_limit_background_429_ratio",
			help: "Share of this relay's calls TalkJS answers 429 whatever the rate, as its adaptive limit learnt it: such 429s cut the limit only when they come faster (0 until learnt, or when every 429 follows the rate)."},
		{dst: &m.rateCuts, name: "rate_limit_cuts_total", labels: []string{"cause"},
			help: "Cuts of the adaptive rate limit, by cause: 429 (TalkJS refused a call) or slow (answers slowing down)."},
		{dst: &m.liveRelays, name: "live_relays",
			help: "Relay processes with a recent heartbeat, this one included."},
		{dst: &m.notifications, name: "notifications_total",
			help: "Wake-up notifications received."},
		{dst: &m.listenerErrors, name: "listener_reconnects_total",
			help: "Times the LISTEN connection was lost and re-established."},
		{dst: &m.dbErrors, name: "database_errors_total", labels: []string{"op"},
			help: "Failed database operations, by operation."},
		{dst: &m.retained, name: "retention_deleted_total", labels: []string{"kind"},
			help: "Rows deleted by retention, by kind (intents, keys, user_syncs, conversation_syncs, relays)."},
		{dst: &m.intents, name: "intents", labels: []string{"state"},
			help: "Intents by state (pending, delivering, dead), read from the database every few seconds."},
		{dst: &m.lag, name: "lag_seconds",
			help: "Age of the oldest intent a relay could claim now (outbox.lag), read every few seconds."},
		{dst: &m.wakeups, name: "wakeups_total", labels: []string{"source"},
			help: "Times the claimer woke up, by source (notify: a producer's NOTIFY; poll: the poll interval; internal: a freed slot, a pause change, a reconnect)."},
	}
}
